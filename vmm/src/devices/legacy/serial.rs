//! The COM1 8250 UART (vm-superio) at 0x3f8, IRQ 4. Output goes to a file or stdout.

use std::io::{self, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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

/// The UART's registers and receive FIFO, for a snapshot (vm-superio's state, with serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl Serial {
    pub fn new(irq: IrqLine, out: SerialOutput) -> Self {
        Serial {
            uart: vm_superio::Serial::new(irq, out),
        }
    }

    pub fn save_state(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Takes a snapshot's registers, keeping this UART's IRQ line and output.
    pub fn restore_state(&mut self, s: &SerialState) -> Result<(), String> {
        if s.in_buffer.len() > SERIAL_FIFO_SIZE {
            return Err(format!(
                "serial: {} bytes in a {SERIAL_FIFO_SIZE}-byte FIFO",
                s.in_buffer.len()
            ));
        }
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let dup = |irq: &IrqLine| {
            irq.0
                .try_clone()
                .map(IrqLine)
                .map_err(|e| format!("serial: {e}"))
        };
        let irq = dup(self.uart.interrupt_evt())?;
        let placeholder = vm_superio::Serial::new(
            dup(&irq)?,
            SerialOutput::new(None, Arc::new(DeviceCounters::default())),
        );
        let out = std::mem::replace(&mut self.uart, placeholder).into_writer();
        self.uart = vm_superio::Serial::from_state(&state, irq, vm_superio::serial::NoEvents, out)
            .map_err(|e| format!("serial: {e:?}"))?;
        Ok(())
    }
}

/// The 16550A's receive FIFO, as vm-superio models it.
const SERIAL_FIFO_SIZE: usize = 64;

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

    #[test]
    fn state_survives_a_round_trip_and_a_bad_fifo_is_refused() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let out = |b: &Arc<Mutex<Vec<u8>>>| {
            SerialOutput::new(
                Some(Box::new(Shared(b.clone()))),
                Arc::new(DeviceCounters::default()),
            )
        };
        let mut s = Serial::new(IrqLine::new().unwrap(), out(&buf));
        s.write(3, &[0x03]); // LCR: 8 data bits
        s.write(1, &[0x01]); // IER: receive interrupts
        s.write(7, &[0x5a]); // scratch
        let saved = s.save_state();
        let mut t = Serial::new(IrqLine::new().unwrap(), out(&buf));
        t.restore_state(&saved).unwrap();
        assert_eq!(t.save_state(), saved);
        // The restored UART keeps its own output.
        t.write(0, b"x");
        assert_eq!(&*buf.lock().unwrap(), b"x");

        let mut bad = saved.clone();
        bad.in_buffer = vec![0; 65];
        let err = t.restore_state(&bad).unwrap_err();
        assert!(err.contains("65 bytes in a 64-byte FIFO"), "{err}");
    }
}
