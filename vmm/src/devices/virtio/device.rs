//! The trait every virtio device implements, and the interrupt it raises.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::INT_VRING;
use crate::event_loop::EventCtl;

/// The device's interrupt: status bits the guest reads and acks, and the irqfd.
pub struct Interrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl Interrupt {
    pub fn new(irq: EventFd) -> Arc<Self> {
        Arc::new(Interrupt {
            status: AtomicU32::new(0),
            irq,
        })
    }

    pub fn trigger(&self, cause: u32) {
        self.status.fetch_or(cause, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            crate::rate_limited_warn!("cannot raise virtio interrupt: {e}");
        }
    }

    pub fn signal_used_queue(&self) {
        self.trigger(INT_VRING);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn irq_evt(&self) -> &EventFd {
        &self.irq
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {0} is not valid in guest memory")]
    InvalidQueue(usize),
    #[error("cannot register device fds: {0}")]
    Register(std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// An error that leaves the device unusable until the guest resets it.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("queue error: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("guest memory error: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("{0}")]
    Other(String),
}

/// Everything a device receives when the driver sets DRIVER_OK. Devices that serve their
/// queues on the event loop keep it, in an [`Activation`](super::Activation), until reset.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<Interrupt>,
}

impl ActivateContext {
    /// The context if it brings exactly `n` queues, or the error that says how many came.
    pub fn expect_queues(self, n: usize) -> Result<Self, ActivateError> {
        if self.queues.len() != n {
            return Err(ActivateError::QueueCount {
                expected: n,
                got: self.queues.len(),
            });
        }
        Ok(self)
    }

    /// For single-queue devices: the context with only its first queue, or the error that
    /// says no queue came.
    pub fn into_single_queue(mut self) -> Result<Self, ActivateError> {
        if self.queues.is_empty() {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: 0,
            });
        }
        self.queues.truncate(1);
        Ok(self)
    }
}

/// Sub-tokens below this are the transport's queue eventfds; devices use the rest.
pub const DEVICE_SUB_BASE: u32 = 0x100;

pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Short name for logs and metrics, e.g. "vsock" or "block0".
    fn name(&self) -> &str;
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered features (VIRTIO_F_VERSION_1 included).
    fn features(&self) -> u64;
    fn ack_features(&mut self, features: u64);
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Takes the queues; register device fds with `ctl` (sub-tokens ≥ DEVICE_SUB_BASE).
    fn activate(&mut self, ctx: ActivateContext, ctl: &EventCtl) -> Result<(), ActivateError>;
    /// The eventfds the guest's notifications of each queue should go to, for a device
    /// that waits on them itself (on a thread of its own). The transport then hands them
    /// to KVM as its ioeventfds and never polls them; `None` (the default): the transport
    /// makes its own and calls `queue_notify`.
    fn queue_events(&self) -> Option<Vec<EventFd>> {
        None
    }
    /// The guest notified queue `index`.
    fn queue_notify(&mut self, index: usize, ctl: &EventCtl) -> Result<(), DeviceError>;
    /// An event on a device fd (sub-token ≥ DEVICE_SUB_BASE).
    fn handle_event(
        &mut self,
        _sub: u32,
        _events: EventSet,
        _ctl: &EventCtl,
    ) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Back to the pre-activation state; drops the queues and device fds.
    fn reset(&mut self, _ctl: &EventCtl) {}
    /// For a snapshot of the active device: its queues as it has advanced them (the
    /// transport's copies only know the driver's configuration). A device whose own state
    /// cannot be saved yet says so.
    fn queue_states(&self) -> Result<Vec<QueueState>, String> {
        Err(format!("{} cannot be saved in a snapshot yet", self.name()))
    }
    /// Called once a restore has activated the device with its saved queues: tell the
    /// driver whatever the new VM changed (vsock: its CID, and that every connection is
    /// gone).
    fn restored(&mut self, _ctl: &EventCtl) {}
}

/// Reads `data.len()` bytes at `offset` from a config-space byte image; out of range reads
/// see zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= config.len() {
        return;
    }
    let end = start.saturating_add(data.len()).min(config.len());
    data[..end - start].copy_from_slice(&config[start..end]);
}
