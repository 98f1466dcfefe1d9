//! One vCPU's architectural state, saved from KVM for a snapshot and put back on restore.
//!
//! Saved on the vCPU's own thread while it is parked (the thread owns the fd); restored
//! on the main thread before the vCPU thread starts.

use kvm_bindings::{
    CpuId, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::vcpu::VcpuError;

/// What KVM holds of one vCPU. The field order is the restore order, which matters:
/// CPUID before MSRs (KVM checks MSRs against CPUID), special registers before the
/// general ones, the LAPIC after the special registers (APIC base MSR), events last.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub sregs: kvm_sregs,
    pub regs: kvm_regs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub msrs: Vec<kvm_msr_entry>,
    pub lapic: kvm_lapic_state,
    pub debugregs: kvm_debugregs,
    pub mp_state: kvm_mp_state,
    pub vcpu_events: kvm_vcpu_events,
}

/// The most CPUID entries a vCPU reports (KVM's own limit).
const MAX_CPUID_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

impl VcpuState {
    /// Reads the state of the vCPU behind `fd`, whose MSRs of interest are `msr_indices`
    /// (the host's list; those this vCPU cannot read are left out).
    ///
    /// First completes any exit the run loop has handled but KVM has not finished (an
    /// `in` or an MMIO read writes its result into the registers on the next entry):
    /// without that, the saved registers would be from the middle of an instruction.
    pub fn save(fd: &mut VcpuFd, id: u8, msr_indices: &[u32]) -> Result<VcpuState, VcpuError> {
        let err = |what| move |source| VcpuError::Setup { id, what, source };
        fd.set_kvm_immediate_exit(1);
        let finished = match fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(err("complete pending exit")(e)),
            // With immediate_exit set, KVM returns EINTR before entering the guest.
            Ok(exit) => Err(VcpuError::Snapshot(format!(
                "vCPU {id} ran instead of stopping to be saved ({exit:?})"
            ))),
        };
        fd.set_kvm_immediate_exit(0);
        finished?;
        Ok(VcpuState {
            id,
            cpuid: fd
                .get_cpuid2(MAX_CPUID_ENTRIES)
                .map_err(err("get CPUID"))?
                .as_slice()
                .to_vec(),
            sregs: fd.get_sregs().map_err(err("get sregs"))?,
            regs: fd.get_regs().map_err(err("get regs"))?,
            xsave: fd.get_xsave().map_err(err("get xsave"))?,
            xcrs: fd.get_xcrs().map_err(err("get xcrs"))?,
            msrs: read_msrs(fd, msr_indices).map_err(err("get MSRs"))?,
            lapic: fd.get_lapic().map_err(err("get LAPIC"))?,
            debugregs: fd.get_debug_regs().map_err(err("get debug registers"))?,
            mp_state: fd.get_mp_state().map_err(err("get MP state"))?,
            vcpu_events: fd.get_vcpu_events().map_err(err("get vCPU events"))?,
        })
    }

    /// Puts this state into the (new, not yet run) vCPU behind `fd`.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuError> {
        let id = self.id;
        let err = |what| move |source| VcpuError::Setup { id, what, source };
        let too_many = |what: &str| VcpuError::Snapshot(format!("vCPU {id}: too many {what}"));
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| too_many("CPUID entries"))?;
        fd.set_cpuid2(&cpuid).map_err(err("set CPUID"))?;
        fd.set_sregs(&self.sregs).map_err(err("set sregs"))?;
        fd.set_regs(&self.regs).map_err(err("set regs"))?;
        // SAFETY: the VMM enables no dynamic XSTATE feature (no arch_prctl), so KVM's
        // xsave area for this vCPU is the legacy 4 KiB `kvm_xsave` and KVM reads no more.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(err("set xsave"))?;
        fd.set_xcrs(&self.xcrs).map_err(err("set xcrs"))?;
        let msrs = Msrs::from_entries(&self.msrs).map_err(|_| too_many("MSRs"))?;
        let set = fd.set_msrs(&msrs).map_err(err("set MSRs"))?;
        if set != self.msrs.len() {
            let refused = self.msrs[set].index;
            return Err(VcpuError::Snapshot(format!(
                "vCPU {id}: KVM refused MSR {refused:#x} ({set} of {} set)",
                self.msrs.len()
            )));
        }
        fd.set_lapic(&self.lapic).map_err(err("set LAPIC"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(err("set debug registers"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(err("set MP state"))?;
        fd.set_vcpu_events(&self.vcpu_events)
            .map_err(err("set vCPU events"))?;
        Ok(())
    }
}

/// The values of every MSR in `indices` this vCPU can read. KVM_GET_MSRS stops at the
/// first MSR it cannot read and says how many it read: skip that one and go on.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, kvm_ioctls::Error> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        let read = fd.get_msrs(&mut msrs)?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // Entry `read` is unreadable when the chunk was cut short.
        let consumed = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[consumed..];
    }
    Ok(out)
}
