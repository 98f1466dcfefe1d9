//! The COM1 8250 UART (vm-superio) at 0x3f8, IRQ 4. Output goes to a file or stdout.

use std::io::{self, Write};
use std::sync::Arc;

use super::IrqLine;
use crate::devices::BusDevice;
use crate::metrics::{DeviceCounters, add};

pub const SERIAL_PORT_BASE: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;

/// Where the guest's console bytes go; counts them for metrics.
pub struct SerialOutput {
    out: Option<Box<dyn Write + Send>>,
    counters: Arc<DeviceCounters>,
}

impl SerialOutput {
    pub fn new(out: Option<Box<dyn Write + Send>>, counters: Arc<DeviceCounters>) -> Self {
        SerialOutput { out, counters }
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        add(&self.counters.tx_bytes, buf.len() as u64);
        if let Some(out) = self.out.as_mut() {
            // A full disk or closed pipe must not stop the guest; drop the bytes.
            let _ = out.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if let Some(out) = self.out.as_mut() {
            let _ = out.flush();
        }
        Ok(())
    }
}

pub struct Serial {
    uart: vm_superio::Serial<IrqLine, vm_superio::serial::NoEvents, SerialOutput>,
}

impl Serial {
    pub fn new(irq: IrqLine, out: SerialOutput) -> Self {
        Serial {
            uart: vm_superio::Serial::new(irq, out),
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(off), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), Some(&value)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.uart.write(off, value) {
                crate::rate_limited_debug!("serial write failed: {e}");
            }
            // Flush per line so a console file follows the guest closely.
            if off == 0 && value == b'\n' {
                let _ = self.uart.writer_mut().flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_output() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(DeviceCounters::default());
        let out = SerialOutput::new(Some(Box::new(Shared(buf.clone()))), count.clone());
        let mut s = Serial::new(IrqLine::new().unwrap(), out);
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        // Odd offsets and sizes are ignored, never a panic.
        s.write(u64::MAX, &[1]);
        s.write(0, &[]);
        let mut d = [0u8; 0];
        s.read(5, &mut d);
        assert_eq!(&*buf.lock().unwrap(), b"hi\n");
        assert_eq!(count.tx_bytes.load(std::sync::atomic::Ordering::Relaxed), 3);
        // LSR reports the transmitter empty.
        let mut lsr = [0u8; 1];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }
}
