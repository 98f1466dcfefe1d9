//! The KVM VM: in-kernel IOAPIC/PIC/LAPIC and PIT, the TSS and identity-map pages, and the
//! guest memory slots.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot create the KVM VM: {0}")]
    Create(#[source] kvm_ioctls::Error),
    #[error("cannot set up the VM ({what}): {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot register guest memory slot {slot}: {source}")]
    MemorySlot {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot get a host address for guest memory")]
    HostAddress,
    #[error("snapshot: {0}")]
    Snapshot(String),
}

pub struct Vm {
    pub fd: VmFd,
}

/// What KVM holds of the VM beside its vCPUs: the interrupt controllers, the PIT and
/// the kvmclock.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

impl Vm {
    /// Creates the VM with its in-kernel interrupt controllers and timer.
    pub fn new(kvm: &Kvm) -> Result<Vm, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        let setup = |what| move |source| VmError::Setup { what, source };
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(setup("TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(setup("identity map address"))?;
        fd.create_irq_chip().map_err(setup("irqchip"))?;
        // The dummy speaker port lets the guest probe port 0x61 without exits.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(setup("PIT"))?;
        Ok(Vm { fd })
    }

    /// Registers every guest memory region as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::HostAddress)?;
            let slot = slot as u32;
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the mapping behind `host` lives as long as `mem`, which the VMM keeps
            // until the VM is gone.
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(|source| VmError::MemorySlot { slot, source })?;
        }
        Ok(())
    }

    /// The interrupt controllers', PIT's and clock's state, for a snapshot.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let err = |what| move |source| VmError::Setup { what, source };
        let chip = |id| {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd.get_irqchip(&mut c).map(|()| c)
        };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER).map_err(err("get PIC master"))?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE).map_err(err("get PIC slave"))?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC).map_err(err("get IOAPIC"))?,
            pit: self.fd.get_pit2().map_err(err("get PIT"))?,
            clock: self.fd.get_clock().map_err(err("get clock"))?,
        })
    }

    /// Puts a snapshot's state into this (new) VM. The kvmclock continues from the
    /// snapshot's value, not from the wall clock: the guest's monotonic time does not
    /// jump by however long the snapshot lay on disk (its wall clock is set afterwards).
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        let err = |what| move |source| VmError::Setup { what, source };
        let chips = [
            (KVM_IRQCHIP_PIC_MASTER, &state.pic_master, "set PIC master"),
            (KVM_IRQCHIP_PIC_SLAVE, &state.pic_slave, "set PIC slave"),
            (KVM_IRQCHIP_IOAPIC, &state.ioapic, "set IOAPIC"),
        ];
        for (id, chip, what) in chips {
            if chip.chip_id != id {
                return Err(VmError::Snapshot(format!(
                    "{what}: the snapshot holds chip {} there",
                    chip.chip_id
                )));
            }
            self.fd.set_irqchip(chip).map_err(err(what))?;
        }
        self.fd.set_pit2(&state.pit).map_err(err("set PIT"))?;
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd.set_clock(&clock).map_err(err("set clock"))?;
        Ok(())
    }

    /// Routes an eventfd to an IOAPIC pin.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Setup {
                what: "irqfd",
                source,
            })
    }

    /// Makes a 32-bit guest write of `datamatch` at `addr` signal `evt` inside KVM.
    pub fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), VmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| VmError::Setup {
                what: "ioeventfd",
                source,
            })
    }
}
