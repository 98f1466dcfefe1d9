//! Opening /dev/kvm and checking it offers what we rely on.

use kvm_ioctls::{Cap, Kvm};

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user open /dev/kvm?)")]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("KVM lacks a required capability: {0:?}")]
    MissingCap(Cap),
}

/// Opens /dev/kvm and checks the capabilities the VMM cannot work without.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(KvmError::Open)?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(KvmError::ApiVersion(version));
    }
    for cap in [Cap::Irqchip, Cap::UserMemory, Cap::SetTssAddr, Cap::Pit2] {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(cap));
        }
    }
    Ok(kvm)
}
