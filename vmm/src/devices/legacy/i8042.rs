//! A minimal i8042 keyboard controller at ports 0x60/0x64.
//!
//! It exists for two jobs: the guest resets the machine by writing 0xFE to the command port
//! (`reboot=k`), and the VMM asks the guest to shut down gracefully by typing Ctrl-Alt-Del.
//! Enough of the controller and keyboard protocol is answered for Linux's driver to probe
//! it; there is no mouse.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use serde::{Deserialize, Serialize};

use super::IrqLine;
use crate::devices::BusDevice;

pub const I8042_PORT_BASE: u64 = 0x60;
/// Covers 0x60 (data) to 0x64 (status/command).
pub const I8042_PORT_LEN: u64 = 5;
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

// Status register.
const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_COMMAND: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

// Controller configuration byte.
const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;
const CB_XLATE: u8 = 0x40;

// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT: u8 = 0xc0;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_WRITE_KBD_OUTBUF: u8 = 0xd2;
const CMD_WRITE_AUX_OUTBUF: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
pub const CMD_RESET_CPU: u8 = 0xfe;

// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_RESET: u8 = 0xff;
const KBD_ECHO: u8 = 0xee;
const KBD_IDENTIFY: u8 = 0xf2;

/// Ctrl, Alt, Del make codes: scan code set 2, and set 1 when the controller translates.
const CTRL_ALT_DEL_SET2: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];
const CTRL_ALT_DEL_SET1: [u8; 4] = [0x1d, 0x38, 0xe0, 0x53];

const BUF_CAPACITY: usize = 16;

pub struct I8042 {
    reset_evt: EventFd,
    irq: IrqLine,
    status: u8,
    control: u8,
    outp: u8,
    /// A controller command waiting for its data byte.
    pending: Option<u8>,
    buf: VecDeque<u8>,
    /// The guest's driver configured the controller; only then can it see key presses.
    driver_seen: bool,
}

/// The controller's registers and output buffer, for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    pub status: u8,
    pub control: u8,
    pub outp: u8,
    pub pending: Option<u8>,
    pub buf: Vec<u8>,
    pub driver_seen: bool,
}

impl I8042 {
    pub fn save_state(&self) -> I8042State {
        I8042State {
            status: self.status,
            control: self.control,
            outp: self.outp,
            pending: self.pending,
            buf: self.buf.iter().copied().collect(),
            driver_seen: self.driver_seen,
        }
    }

    pub fn restore_state(&mut self, s: &I8042State) -> Result<(), String> {
        if s.buf.len() > BUF_CAPACITY {
            return Err(format!(
                "i8042: {} bytes in a {BUF_CAPACITY}-byte buffer",
                s.buf.len()
            ));
        }
        self.status = s.status;
        self.control = s.control;
        self.outp = s.outp;
        self.pending = s.pending;
        self.buf = s.buf.iter().copied().collect();
        self.driver_seen = s.driver_seen;
        self.raise_irq();
        Ok(())
    }

    pub fn new(reset_evt: EventFd, irq: IrqLine) -> Self {
        I8042 {
            reset_evt,
            irq,
            status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
            control: CB_KBD_INT | CB_POST_OK,
            outp: 0x01,
            pending: None,
            buf: VecDeque::with_capacity(BUF_CAPACITY),
            driver_seen: false,
        }
    }

    /// Whether a guest driver has configured the controller (so Ctrl-Alt-Del can work).
    pub fn driver_seen(&self) -> bool {
        self.driver_seen
    }

    /// Types Ctrl-Alt-Del: Linux turns it into SIGINT for init (or a reboot).
    pub fn send_ctrl_alt_del(&mut self) {
        let keys = if self.control & CB_XLATE != 0 {
            CTRL_ALT_DEL_SET1
        } else {
            CTRL_ALT_DEL_SET2
        };
        for k in keys {
            self.push(k);
        }
        self.raise_irq();
    }

    fn push(&mut self, byte: u8) {
        if self.buf.len() < BUF_CAPACITY {
            self.buf.push_back(byte);
        }
    }

    fn raise_irq(&self) {
        if !self.buf.is_empty()
            && self.control & CB_KBD_INT != 0
            && let Err(e) = self.irq.trigger()
        {
            crate::rate_limited_warn!("i8042: cannot raise IRQ 1: {e}");
        }
    }

    fn reset(&self) {
        tracing::info!("guest requested a reset through the i8042");
        if let Err(e) = self.reset_evt.write(1) {
            crate::rate_limited_error!("i8042: cannot signal reset: {e}");
        }
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_OUTBUF | CMD_WRITE_AUX_OUTBUF
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_READ_OUTP => self.push(self.outp),
            CMD_READ_INPUT => self.push(0),
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST => self.push(0x00),
            // No aux port: report its test as failed so the driver leaves it alone.
            CMD_AUX_TEST => self.push(0xff),
            CMD_KBD_DISABLE => self.status &= !SB_KBD_ENABLED,
            CMD_KBD_ENABLE => self.status |= SB_KBD_ENABLED,
            CMD_AUX_DISABLE | CMD_AUX_ENABLE => {}
            CMD_RESET_CPU => self.reset(),
            _ => {}
        }
        self.raise_irq();
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_LAST_WAS_COMMAND;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => {
                self.control = value;
                self.driver_seen = true;
            }
            Some(CMD_WRITE_OUTP) => {
                self.outp = value;
                // Bit 0 low pulls the CPU reset line.
                if value & 1 == 0 {
                    self.reset();
                }
            }
            Some(CMD_WRITE_KBD_OUTBUF) => self.push(value),
            Some(_) => {}
            // A byte for the keyboard itself.
            None => match value {
                KBD_RESET => {
                    self.push(KBD_ACK);
                    self.push(KBD_SELF_TEST_OK);
                }
                KBD_ECHO => self.push(KBD_ECHO),
                KBD_IDENTIFY => {
                    self.push(KBD_ACK);
                    self.push(0xab);
                    self.push(0x83);
                }
                _ => self.push(KBD_ACK),
            },
        }
        self.raise_irq();
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            DATA_OFFSET => {
                let v = self.buf.pop_front().unwrap_or(0);
                // One byte per interrupt: ask again while more are queued.
                self.raise_irq();
                v
            }
            COMMAND_OFFSET => self.status | if self.buf.is_empty() { 0 } else { SB_OUT_FULL },
            _ => 0,
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            DATA_OFFSET => self.data(value),
            COMMAND_OFFSET => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (I8042, EventFd) {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let d = I8042::new(reset.try_clone().unwrap(), IrqLine::new().unwrap());
        (d, reset)
    }

    fn read(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8; 1];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn state_survives_a_round_trip_and_an_overfull_buffer_is_refused() {
        let (mut d, _r) = dev();
        d.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        d.write(DATA_OFFSET, &[CB_KBD_INT | CB_XLATE]);
        d.send_ctrl_alt_del();
        let saved = d.save_state();
        let (mut e, _r2) = dev();
        e.restore_state(&saved).unwrap();
        assert_eq!(e.save_state(), saved);
        assert!(e.driver_seen());
        // The keys typed before the snapshot are still there to read.
        assert_eq!(read(&mut e, DATA_OFFSET), CTRL_ALT_DEL_SET1[0]);

        let mut bad = saved.clone();
        bad.buf = vec![0; BUF_CAPACITY + 1];
        let err = e.restore_state(&bad).unwrap_err();
        assert!(err.contains("17 bytes in a 16-byte buffer"), "{err}");
    }

    #[test]
    fn driver_is_seen_once_it_writes_the_config_byte() {
        let (mut d, _r) = dev();
        assert!(!d.driver_seen());
        d.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert!(!d.driver_seen());
        d.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        d.write(DATA_OFFSET, &[CB_KBD_INT]);
        assert!(d.driver_seen());
    }

    #[test]
    fn reset_command_signals_reset() {
        let (mut d, reset) = dev();
        assert!(reset.read().is_err()); // nothing yet (non-blocking)
        d.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn ctrl_alt_del_is_queued_with_irq() {
        let (mut d, _reset) = dev();
        d.send_ctrl_alt_del();
        assert_eq!(read(&mut d, COMMAND_OFFSET) & SB_OUT_FULL, SB_OUT_FULL);
        let got: Vec<u8> = (0..4).map(|_| read(&mut d, DATA_OFFSET)).collect();
        assert_eq!(got, CTRL_ALT_DEL_SET2);
        assert_eq!(read(&mut d, COMMAND_OFFSET) & SB_OUT_FULL, 0);
        assert!(d.irq.0.read().unwrap() >= 1);
    }

    #[test]
    fn controller_protocol_basics() {
        let (mut d, _r) = dev();
        d.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut d, DATA_OFFSET), 0x55);
        d.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        d.write(DATA_OFFSET, &[CB_XLATE | CB_KBD_INT]);
        d.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, DATA_OFFSET), CB_XLATE | CB_KBD_INT);
        d.write(DATA_OFFSET, &[KBD_RESET]);
        assert_eq!(read(&mut d, DATA_OFFSET), KBD_ACK);
        assert_eq!(read(&mut d, DATA_OFFSET), KBD_SELF_TEST_OK);
        // The buffer is bounded: a flood of commands never grows it.
        for _ in 0..1000 {
            d.write(DATA_OFFSET, &[0x00]);
        }
        assert_eq!(d.buf.len(), BUF_CAPACITY);
        d.write(DATA_OFFSET, &[]);
        d.write(99, &[CMD_RESET_CPU]);
    }
}
