//! KVM state: the /dev/kvm handle, the VM with its guest memory, and the vCPUs.

pub mod kvm;
pub mod memory;
pub mod probe;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
