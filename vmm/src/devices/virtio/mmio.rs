//! The virtio-mmio transport (version 2 register layout, virtio 1.1 §4.2.2).
//!
//! The transport holds the register state and queue configuration, owns one eventfd per
//! queue (KVM signals it directly through an ioeventfd when available; a trapped
//! QueueNotify write signals it by hand), and activates the device on DRIVER_OK.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::device::{ActivateContext, DEVICE_SUB_BASE, Interrupt, VirtioDevice};
use super::{INT_CONFIG, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;
use crate::event_loop::{EventCtl, EventHandler};

pub const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
pub const MMIO_VERSION: u32 = 2;
pub const VENDOR_ID: u32 = 0x5259_5048; // "HPYR"

// Register offsets.
pub const REG_MAGIC: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
pub const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
pub const REG_QUEUE_USED_LOW: u64 = 0x0a0;
pub const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const REG_CONFIG: u64 = 0x100;

// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// One queue as a snapshot saves it (virtio-queue's `QueueState`, with serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(q: QueueSnapshot) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// The transport's registers and queues, for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub queue_sel: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub status: u32,
    pub config_generation: u32,
    pub activated: bool,
    pub broken: bool,
    pub interrupt_status: u32,
    pub bad_config: Vec<bool>,
    /// The device's own queues once activated, the driver's configuration before.
    pub queues: Vec<QueueSnapshot>,
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    /// The driver wrote a size or ring address the queue cannot take (virtio-queue keeps
    /// the old value); activation refuses such a queue.
    bad_config: Vec<bool>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
    /// Set when the device failed; it ignores the guest until reset.
    broken: bool,
    ctl: EventCtl,
}

impl MmioTransport {
    /// Creates the transport and registers its queue eventfds with the event loop.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: EventFd,
        ctl: EventCtl,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| std::io::Error::other(e.to_string()))?);
        }
        let queue_evts = match device.queue_events() {
            Some(evts) if evts.len() == queues.len() => evts,
            Some(evts) => {
                return Err(std::io::Error::other(format!(
                    "{} has {} queues but {} queue eventfds",
                    device.name(),
                    queues.len(),
                    evts.len()
                )));
            }
            None => {
                let mut evts = Vec::new();
                for i in 0..queues.len() {
                    let evt = EventFd::new(libc::EFD_NONBLOCK)?;
                    ctl.add(evt.as_raw_fd(), EventSet::IN, i as u32)?;
                    evts.push(evt);
                }
                evts
            }
        };
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Interrupt::new(irq),
            queues,
            bad_config: vec![false; queue_evts.len()],
            queue_evts,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            broken: false,
            ctl,
        })
    }

    /// The eventfds KVM should signal on a QueueNotify write of each queue index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// The registers and queues, for a snapshot of the paused VM.
    pub fn save_state(&self) -> Result<TransportState, String> {
        let mut queues: Vec<QueueSnapshot> = self.queues.iter().map(|q| q.state().into()).collect();
        if self.activated {
            for (i, live) in self.device.queue_states()?.into_iter().enumerate() {
                if let Some(q) = queues.get_mut(i) {
                    *q = live.into();
                }
            }
        }
        Ok(TransportState {
            device_type: self.device.device_type(),
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            activated: self.activated,
            broken: self.broken,
            interrupt_status: self.interrupt.status(),
            bad_config: self.bad_config.clone(),
            queues,
        })
    }

    /// Puts a snapshot's state into this fresh transport and, if the device was active,
    /// activates it with the saved queues, each checked against guest memory as on a
    /// driver's DRIVER_OK. The snapshot is as untrusted as the guest that was saved.
    pub fn restore_state(&mut self, s: &TransportState) -> Result<(), String> {
        let name = self.device.name().to_string();
        if s.device_type != self.device.device_type() {
            return Err(format!(
                "{name}: the snapshot has a device of type {} in its place",
                s.device_type
            ));
        }
        let max_sizes = self.device.queue_max_sizes();
        if s.queues.len() != max_sizes.len() || s.bad_config.len() != max_sizes.len() {
            return Err(format!(
                "{name}: the snapshot has {} queues, the device {}",
                s.queues.len(),
                max_sizes.len()
            ));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, (q, &max)) in s.queues.iter().zip(max_sizes).enumerate() {
            if q.max_size != max {
                return Err(format!(
                    "{name}: queue {i} has {} entries at most in the snapshot, {max} here",
                    q.max_size
                ));
            }
            queues.push(
                Queue::try_from(QueueState::from(*q))
                    .map_err(|e| format!("{name}: queue {i}: {e}"))?,
            );
        }
        self.queues = queues;
        self.bad_config = s.bad_config.clone();
        self.queue_sel = s.queue_sel;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        // Only features this device offers, as the register write allows.
        self.driver_features = s.driver_features & (self.device.features() | VIRTIO_F_VERSION_1);
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.broken = s.broken;
        if self.status & STATUS_FEATURES_OK != 0 {
            self.device.ack_features(self.driver_features);
        }
        if s.activated && !s.broken {
            self.activate();
            if !self.activated {
                return Err(format!("{name}: the snapshot's queues do not activate"));
            }
            self.device.restored(&self.ctl);
        }
        if s.interrupt_status != 0 {
            self.interrupt.trigger(s.interrupt_status);
        }
        Ok(())
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue configuration may change only before DRIVER_OK and while the queue is off.
    fn queue_config_allowed(&self) -> bool {
        self.status & (STATUS_DRIVER_OK | STATUS_FAILED) == 0
            && self
                .queues
                .get(self.queue_sel as usize)
                .is_some_and(|q| !q.ready())
    }

    fn update_queue<F: FnOnce(&mut Queue)>(&mut self, f: F) {
        if self.queue_config_allowed() {
            if let Some(q) = self.selected_queue() {
                f(q);
            }
        } else {
            crate::rate_limited_debug!("{}: queue config write ignored", self.device.name());
        }
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset(&self.ctl);
        }
        for (q, &max) in self.queues.iter_mut().zip(self.device.queue_max_sizes()) {
            q.reset();
            q.set_size(max);
        }
        self.bad_config.fill(false);
        self.activated = false;
        self.broken = false;
        self.status = 0;
        self.queue_sel = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits (apart from reset).
        if value & self.status != self.status {
            crate::rate_limited_warn!(
                "{}: driver cleared status bits ({:#x} -> {value:#x})",
                self.device.name(),
                self.status
            );
            return;
        }
        let newly = value & !self.status;
        if newly & STATUS_FEATURES_OK != 0 {
            // Refuse a driver that does not speak virtio 1.0.
            if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                crate::rate_limited_warn!(
                    "{}: driver did not accept VERSION_1",
                    self.device.name()
                );
                self.status = value & !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
                if value & STATUS_DRIVER_OK != 0 {
                    self.fail("DRIVER_OK without FEATURES_OK".into());
                }
                return;
            }
            self.device.ack_features(self.driver_features);
        }
        self.status = value;
        if newly & STATUS_DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if self.status & STATUS_FEATURES_OK == 0 {
            self.fail("DRIVER_OK without FEATURES_OK".into());
            return;
        }
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && (self.bad_config[i] || !q.is_valid(&self.mem)) {
                self.fail(format!("queue {i} is not valid"));
                return;
            }
        }
        // The device gets its own copies; ours keep the configuration for reset.
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            match Queue::try_from(q.state()) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    self.fail(format!("queue {i}: {e}"));
                    return;
                }
            }
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
        };
        match self.device.activate(ctx, &self.ctl) {
            Ok(()) => {
                self.activated = true;
                tracing::debug!("{}: activated", self.device.name());
            }
            Err(e) => self.fail(format!("activation failed: {e}")),
        }
    }

    /// Marks the device broken: logged, NEEDS_RESET, and a config interrupt so the driver
    /// notices. The guest can recover by resetting the device.
    fn fail(&mut self, why: String) {
        // The guest can break and reset a device in a loop: rate-limited.
        crate::rate_limited_error!("{}: device broken: {why}", self.device.name());
        self.broken = true;
        self.status |= STATUS_NEEDS_RESET;
        self.interrupt.trigger(INT_CONFIG);
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let f = self.device.features() | VIRTIO_F_VERSION_1;
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self
                .device
                .queue_max_sizes()
                .get(self.queue_sel as usize)
                .map_or(0, |&m| u32::from(m)),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                crate::rate_limited_debug!("{}: read of register {offset:#x}", self.device.name());
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    // Only features we offered can be accepted.
                    let offered = self.device.features() | VIRTIO_F_VERSION_1;
                    match self.driver_features_sel {
                        0 => {
                            self.driver_features = (self.driver_features & !0xffff_ffff)
                                | (u64::from(v) & offered & 0xffff_ffff)
                        }
                        1 => {
                            self.driver_features = (self.driver_features & 0xffff_ffff)
                                | ((u64::from(v) << 32) & offered)
                        }
                        _ => {}
                    }
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                let max = self
                    .device
                    .queue_max_sizes()
                    .get(self.queue_sel as usize)
                    .copied()
                    .unwrap_or(0);
                // Zero, too big or not a power of two: remembered, and activation
                // refuses the queue if it is made ready.
                let valid =
                    u16::try_from(v).is_ok_and(|n| n != 0 && n <= max && n.is_power_of_two());
                if self.queue_config_allowed() {
                    let sel = self.queue_sel as usize;
                    if let Some(bad) = self.bad_config.get_mut(sel) {
                        *bad = !valid;
                    }
                    if valid {
                        self.update_queue(|q| q.set_size(v as u16));
                    }
                }
            }
            REG_QUEUE_READY => self.update_ready(v == 1),
            REG_QUEUE_NOTIFY => {
                // Only reached when KVM has no ioeventfd for this address.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            REG_QUEUE_DESC_LOW => {
                if self.check_aligned(v, 16) {
                    self.update_queue(|q| q.set_desc_table_address(Some(v), None))
                }
            }
            REG_QUEUE_DESC_HIGH => self.update_queue(|q| q.set_desc_table_address(None, Some(v))),
            REG_QUEUE_AVAIL_LOW => {
                if self.check_aligned(v, 2) {
                    self.update_queue(|q| q.set_avail_ring_address(Some(v), None))
                }
            }
            REG_QUEUE_AVAIL_HIGH => self.update_queue(|q| q.set_avail_ring_address(None, Some(v))),
            REG_QUEUE_USED_LOW => {
                if self.check_aligned(v, 4) {
                    self.update_queue(|q| q.set_used_ring_address(Some(v), None))
                }
            }
            REG_QUEUE_USED_HIGH => self.update_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => crate::rate_limited_debug!(
                "{}: write of {v:#x} to register {offset:#x} ignored",
                self.device.name()
            ),
        }
    }

    /// Records a misaligned ring address against the selected queue.
    fn check_aligned(&mut self, low: u32, align: u32) -> bool {
        let ok = low.is_multiple_of(align);
        if !ok
            && self.queue_config_allowed()
            && let Some(bad) = self.bad_config.get_mut(self.queue_sel as usize)
        {
            *bad = true;
        }
        ok
    }

    fn update_ready(&mut self, ready: bool) {
        // Ready may be cleared at any time before DRIVER_OK; set only when allowed.
        if self.status & STATUS_DRIVER_OK == 0
            && let Some(q) = self.selected_queue()
        {
            q.set_ready(ready);
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
            return;
        }
        data.fill(0);
        // Registers are 32 bits wide and must be read whole.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            crate::rate_limited_debug!("{}: bad register read size", self.device.name());
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            if self.status & STATUS_FAILED == 0 {
                self.device.write_config(offset - REG_CONFIG, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            crate::rate_limited_debug!("{}: bad register write size", self.device.name());
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

impl EventHandler for MmioTransport {
    fn handle_event(&mut self, sub: u32, events: EventSet, ctl: &EventCtl) {
        let result = if sub < DEVICE_SUB_BASE {
            let Some(evt) = self.queue_evts.get(sub as usize) else {
                return;
            };
            // Drain the notification even if we will not act on it.
            let _ = evt.read();
            if !self.activated || self.broken {
                return;
            }
            self.device.queue_notify(sub as usize, ctl)
        } else {
            if self.broken {
                return;
            }
            self.device.handle_event(sub, events, ctl)
        };
        if let Err(e) = result {
            self.fail(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::INT_CONFIG;
    use crate::devices::virtio::device::{ActivateError, DeviceError};
    use crate::devices::virtio::test_utils::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log {
        activations: usize,
        notifies: Vec<usize>,
        resets: usize,
        acked: u64,
        fail_notify: bool,
        /// Queue eventfds the device waits on itself, if any.
        own_events: Option<Vec<EventFd>>,
    }

    struct Dummy(Arc<Mutex<Log>>);
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn name(&self) -> &str {
            "dummy"
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b101
        }
        fn ack_features(&mut self, f: u64) {
            self.0.lock().unwrap().acked = f;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::devices::virtio::device::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn activate(&mut self, _: ActivateContext, _: &EventCtl) -> Result<(), ActivateError> {
            self.0.lock().unwrap().activations += 1;
            Ok(())
        }
        fn queue_notify(&mut self, i: usize, _: &EventCtl) -> Result<(), DeviceError> {
            let mut l = self.0.lock().unwrap();
            l.notifies.push(i);
            if l.fail_notify {
                return Err(DeviceError::Other("boom".into()));
            }
            Ok(())
        }
        fn reset(&mut self, _: &EventCtl) {
            self.0.lock().unwrap().resets += 1;
        }
        fn queue_events(&self) -> Option<Vec<EventFd>> {
            let l = self.0.lock().unwrap();
            let evts = l.own_events.as_ref()?;
            Some(evts.iter().map(|e| e.try_clone().unwrap()).collect())
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Log>>) {
        transport_with(Log::default()).unwrap()
    }

    fn transport_with(log: Log) -> std::io::Result<(MmioTransport, Arc<Mutex<Log>>)> {
        let log = Arc::new(Mutex::new(log));
        let t = MmioTransport::new(
            Box::new(Dummy(log.clone())),
            test_memory(),
            test_irq(),
            test_ctl(),
        )?;
        Ok((t, log))
    }

    #[test]
    fn a_device_that_waits_on_its_queues_itself_gets_their_notifications() {
        let evts = || (0..2).map(|_| test_irq()).collect::<Vec<_>>();
        let own = evts();
        let mine: Vec<EventFd> = own.iter().map(|e| e.try_clone().unwrap()).collect();
        let log = Log {
            own_events: Some(own),
            ..Log::default()
        };
        let (mut t, log) = transport_with(log).unwrap();
        negotiate(&mut t);
        setup_queue(&mut t, 1, 8, 0x1_0000);
        wr(&mut t, REG_STATUS, ALL_OK);
        // A trapped QueueNotify (no ioeventfd) lands where KVM's would: the device's own.
        wr(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(mine[1].read().unwrap(), 1);
        assert!(mine[0].read().is_err(), "queue 0 was not notified");
        assert!(
            log.lock().unwrap().notifies.is_empty(),
            "no queue_notify call"
        );

        let short = Log {
            own_events: Some(evts()[..1].iter().map(|e| e.try_clone().unwrap()).collect()),
            ..Log::default()
        };
        let err = transport_with(short).err().unwrap().to_string();
        assert!(
            err.contains("dummy has 2 queues but 1 queue eventfds"),
            "{err}"
        );
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Configures queue `q` with rings in guest memory.
    fn setup_queue(t: &mut MmioTransport, q: u32, size: u32, base: u64) {
        wr(t, REG_QUEUE_SEL, q);
        wr(t, REG_QUEUE_NUM, size);
        wr(t, REG_QUEUE_DESC_LOW, base as u32);
        wr(t, REG_QUEUE_DESC_HIGH, (base >> 32) as u32);
        wr(t, REG_QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
        wr(t, REG_QUEUE_AVAIL_HIGH, 0);
        wr(t, REG_QUEUE_USED_LOW, (base + 0x2000) as u32);
        wr(t, REG_QUEUE_USED_HIGH, 0);
        wr(t, REG_QUEUE_READY, 1);
    }

    fn negotiate(t: &mut MmioTransport) {
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, REG_DRIVER_FEATURES_SEL, 0);
        wr(t, REG_DRIVER_FEATURES, u32::MAX);
        wr(t, REG_DRIVER_FEATURES_SEL, 1);
        wr(t, REG_DRIVER_FEATURES, 1);
        wr(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    const ALL_OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn transport_state_round_trips_and_bad_snapshots_are_refused_by_name() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x1_0000);
        let saved = t.save_state().unwrap();
        let (mut u, log) = transport();
        u.restore_state(&saved).unwrap();
        assert_eq!(u.save_state().unwrap(), saved);
        assert_eq!(log.lock().unwrap().acked, saved.driver_features);

        // Active, a device that cannot save its own state refuses by name.
        wr(&mut t, REG_STATUS, ALL_OK);
        let err = t.save_state().unwrap_err();
        assert!(
            err.contains("dummy cannot be saved in a snapshot yet"),
            "{err}"
        );

        let change = |f: &dyn Fn(&mut TransportState)| {
            let mut s = saved.clone();
            f(&mut s);
            s
        };
        let cases: Vec<(&str, TransportState, &str)> = vec![
            (
                "another device",
                change(&|s| s.device_type = 4),
                "a device of type 4",
            ),
            (
                "a queue missing",
                change(&|s| {
                    s.queues.pop();
                }),
                "1 queues, the device 2",
            ),
            (
                "a bigger queue",
                change(&|s| s.queues[0].max_size = 1024),
                "1024 entries at most",
            ),
            (
                "a size that is no power of two",
                change(&|s| s.queues[0].size = 3),
                "queue 0",
            ),
            (
                "rings outside guest memory, active",
                change(&|s| {
                    s.status = ALL_OK;
                    s.activated = true;
                    s.queues[0].desc_table = 1 << 40;
                }),
                "do not activate",
            ),
        ];
        for (name, state, want) in cases {
            let (mut fresh, _) = transport();
            let err = fresh.restore_state(&state).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn identity_registers_and_features() {
        let (mut t, _) = transport();
        assert_eq!(rd(&mut t, REG_MAGIC), MMIO_MAGIC);
        assert_eq!(rd(&mut t, REG_VERSION), 2);
        assert_eq!(rd(&mut t, REG_DEVICE_ID), 42);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 0b101);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 1);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 7);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 0);
        wr(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 8);
        wr(&mut t, REG_QUEUE_SEL, 9);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0);
        let mut b = [0u8; 2];
        t.read(REG_CONFIG + 1, &mut b);
        assert_eq!(b, [2, 3]);
        // Wrong sizes or alignment read as zero and do not panic.
        let mut b = [0xffu8; 2];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        let mut b = [0xffu8; 4];
        t.read(REG_MAGIC + 1, &mut b);
        assert_eq!(b, [0; 4]);
        t.write(REG_STATUS, &[1]);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
    }

    #[test]
    fn negotiation_activation_and_reset() {
        let (mut t, log) = transport();
        negotiate(&mut t);
        // Only offered bits are accepted.
        assert_eq!(log.lock().unwrap().acked, VIRTIO_F_VERSION_1 | 0b101);
        setup_queue(&mut t, 0, 16, 0x10_0000);
        wr(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(log.lock().unwrap().activations, 1);
        assert_eq!(rd(&mut t, REG_STATUS), ALL_OK);
        // After DRIVER_OK the queue configuration is frozen.
        wr(&mut t, REG_QUEUE_SEL, 0);
        wr(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
        // A trapped notify reaches the device through the event loop path.
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        wr(&mut t, REG_QUEUE_NOTIFY, 55);
        t.handle_event(0, EventSet::IN, &test_ctl());
        assert_eq!(log.lock().unwrap().notifies, vec![0]);
        // Clearing bits is refused; writing 0 resets.
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(rd(&mut t, REG_STATUS), ALL_OK);
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        assert_eq!(log.lock().unwrap().resets, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 0);
        // Works again after the reset.
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x10_0000);
        wr(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(log.lock().unwrap().activations, 2);
    }

    #[test]
    fn driver_without_version_1_is_refused() {
        let (mut t, log) = transport();
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, REG_DRIVER_FEATURES, 0b101);
        wr(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(rd(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        wr(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(log.lock().unwrap().activations, 0);
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn bad_queues_mark_the_device_broken() {
        let cases = [
            ("size not a power of two", (3u32, 0x10_0000u64)),
            ("size above the maximum", (64, 0x10_0000)),
            ("rings outside guest memory", (16, 0xffff_0000_0000)),
            ("misaligned descriptor table", (16, 0x10_0001)),
        ];
        check_cases(cases, |(size, base)| {
            let (mut t, log) = transport();
            negotiate(&mut t);
            setup_queue(&mut t, 0, size, base);
            wr(&mut t, REG_STATUS, ALL_OK);
            assert_eq!(
                log.lock().unwrap().activations,
                0,
                "size {size} base {base:#x}"
            );
            assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
            assert_ne!(rd(&mut t, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
            wr(&mut t, REG_INTERRUPT_ACK, INT_CONFIG);
            assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);
        });
    }

    #[test]
    fn a_failing_device_goes_quiet_until_reset() {
        let (mut t, log) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 16, 0x10_0000);
        wr(&mut t, REG_STATUS, ALL_OK);
        log.lock().unwrap().fail_notify = true;
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        t.handle_event(0, EventSet::IN, &test_ctl());
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        t.handle_event(0, EventSet::IN, &test_ctl());
        assert_eq!(log.lock().unwrap().notifies.len(), 1);
        // Unknown sub-tokens are ignored.
        t.handle_event(7, EventSet::IN, &test_ctl());
    }
}
