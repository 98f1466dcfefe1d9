//! PC legacy devices: the 8250 UART, the i8042 keyboard controller (for reset and
//! Ctrl-Alt-Del) and the boot-timer MMIO page.

pub mod boot_timer;
pub mod i8042;
pub mod serial;

use std::io;

use vmm_sys_util::eventfd::EventFd;

pub use boot_timer::BootTimer;
pub use i8042::I8042;
pub use serial::{Serial, SerialOutput};

/// An interrupt line backed by an eventfd that KVM turns into an IOAPIC pin (irqfd).
pub struct IrqLine(pub EventFd);

impl IrqLine {
    pub fn new() -> io::Result<Self> {
        Ok(IrqLine(EventFd::new(libc::EFD_NONBLOCK)?))
    }

    pub fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
