//! Places devices on the buses: legacy devices at their fixed ports, virtio-mmio devices
//! one page each from `VIRTIO_MMIO_START` with IRQs from 5, each wired to KVM with an irqfd
//! and (where KVM offers it) ioeventfds, and announced on the kernel command line.

use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{
    BOOT_TIMER_ADDR, IRQ_I8042, IRQ_SERIAL, IRQ_VIRTIO_FIRST, IRQ_VIRTIO_LAST, MMIO_DEVICE_SIZE,
    VIRTIO_MMIO_START,
};
use crate::devices::legacy::IrqLine;
use crate::devices::legacy::boot_timer::BootTimer;
use crate::devices::legacy::i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
use crate::devices::legacy::serial::{SERIAL_PORT_BASE, SERIAL_PORT_LEN, Serial, SerialOutput};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::{Bus, BusError};
use crate::event_loop::EventLoop;
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("no IRQ left for another virtio device (pins {IRQ_VIRTIO_FIRST}-{IRQ_VIRTIO_LAST})")]
    OutOfIrqs,
    #[error("cannot create the virtio-mmio transport: {0}")]
    Transport(std::io::Error),
}

/// Where a virtio device landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    pub addr: u64,
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel command-line entry that announces this device.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            MMIO_DEVICE_SIZE / 1024,
            self.addr,
            self.irq
        )
    }
}

pub struct DeviceManager {
    pub io_bus: Bus,
    pub mmio_bus: Bus,
    pub serial: Option<Arc<Mutex<Serial>>>,
    pub i8042: Option<Arc<Mutex<I8042>>>,
    pub virtio: Vec<(MmioSlot, Arc<Mutex<MmioTransport>>)>,
    next_slot: MmioSlot,
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceManager {
    pub fn new() -> Self {
        DeviceManager {
            io_bus: Bus::new(),
            mmio_bus: Bus::new(),
            serial: None,
            i8042: None,
            virtio: Vec::new(),
            next_slot: MmioSlot {
                addr: VIRTIO_MMIO_START,
                irq: IRQ_VIRTIO_FIRST,
            },
        }
    }

    fn irq_line(vm: &Vm, gsi: u32) -> Result<IrqLine, DeviceManagerError> {
        let line = IrqLine::new().map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(&line.0, gsi)?;
        Ok(line)
    }

    /// COM1, the i8042 (its reset goes to `reset_evt`) and the boot timer.
    pub fn add_legacy(
        &mut self,
        vm: &Vm,
        serial_out: SerialOutput,
        reset_evt: EventFd,
        start: Instant,
        boot_time_us: Arc<AtomicU64>,
    ) -> Result<(), DeviceManagerError> {
        let serial = Arc::new(Mutex::new(Serial::new(
            Self::irq_line(vm, IRQ_SERIAL)?,
            serial_out,
        )));
        self.io_bus
            .insert(serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)?;
        self.serial = Some(serial);
        let i8042 = Arc::new(Mutex::new(I8042::new(
            reset_evt,
            Self::irq_line(vm, IRQ_I8042)?,
        )));
        self.io_bus
            .insert(i8042.clone(), I8042_PORT_BASE, I8042_PORT_LEN)?;
        self.i8042 = Some(i8042);
        let timer = BootTimer::new(start, boot_time_us);
        self.mmio_bus.insert(
            Arc::new(Mutex::new(timer)),
            BOOT_TIMER_ADDR,
            MMIO_DEVICE_SIZE,
        )?;
        Ok(())
    }

    /// Puts a virtio device on the next MMIO page and IRQ.
    pub fn add_virtio(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        event_loop: &mut EventLoop,
        device: Box<dyn VirtioDevice>,
    ) -> Result<MmioSlot, DeviceManagerError> {
        let slot = self.next_slot;
        if slot.irq > IRQ_VIRTIO_LAST {
            return Err(DeviceManagerError::OutOfIrqs);
        }
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(&irq, slot.irq)?;
        let name = device.name().to_string();
        let ctl = event_loop.next_ctl();
        let transport = MmioTransport::new(device, mem.clone(), irq, ctl)
            .map_err(DeviceManagerError::Transport)?;
        for (i, evt) in transport.queue_evts().iter().enumerate() {
            // Without an ioeventfd the transport still sees the trapped write.
            if let Err(e) = vm.register_ioevent(evt, slot.addr + REG_QUEUE_NOTIFY, i as u32) {
                tracing::warn!(
                    "{name}: no ioeventfd for queue {i} (fd {}): {e}",
                    evt.as_raw_fd()
                );
            }
        }
        let transport = Arc::new(Mutex::new(transport));
        event_loop.add_handler(transport.clone());
        self.mmio_bus
            .insert(transport.clone(), slot.addr, MMIO_DEVICE_SIZE)?;
        self.virtio.push((slot, transport));
        self.next_slot = MmioSlot {
            addr: slot.addr + MMIO_DEVICE_SIZE,
            irq: slot.irq + 1,
        };
        tracing::debug!("{name} at {:#x} irq {}", slot.addr, slot.irq);
        Ok(slot)
    }

    /// `virtio_mmio.device=` entries for every virtio device, in order.
    pub fn cmdline_entries(&self) -> Vec<String> {
        self.virtio.iter().map(|(s, _)| s.cmdline_entry()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_entry_format() {
        let s = MmioSlot {
            addr: 0xd000_1000,
            irq: 5,
        };
        assert_eq!(s.cmdline_entry(), "virtio_mmio.device=4K@0xd0001000:5");
    }
}
