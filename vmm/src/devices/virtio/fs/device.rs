//! The virtio-fs device: config space (tag, number of request queues), a hiprio queue and
//! one request queue, served by its worker thread while the driver is active. Guest
//! kernels before 6.11 use one request queue only, so one is what it offers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use virtio_queue::{QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::memory_view::memory_view;
use super::share::{ShareError, open_share};
use super::worker::{FsWorker, Session, queue_017};
use crate::config::{FS_TAG_MAX, FsConfig};
use crate::devices::virtio::device::{
    ActivateContext, ActivateError, DeviceError, VirtioDevice, read_config_bytes,
};
use crate::devices::virtio::{Activation, TYPE_FS, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::event_loop::EventCtl;
use crate::metrics::DeviceCounters;

/// Requests in flight per queue; the Linux driver allocates this many.
const QUEUE_SIZE: u16 = 1024;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
/// How long a reset (on a vCPU, holding the transport) waits for the request in progress
/// to finish. Past it the reset completes anyway: the worker drops that request's reply.
pub const RESET_WAIT: Duration = Duration::from_millis(200);

/// The device's side of an active session. Dropping it (reset) stops the session: the
/// worker is told between requests, and the reset waits up to [`RESET_WAIT`] for it, never
/// longer, whatever the request in progress does.
struct ActiveSession {
    name: String,
    /// The queues as the driver handed them over, which is what they still are while
    /// the worker has answered nothing.
    queues_at_start: Vec<QueueState>,
    stop: Arc<AtomicBool>,
    kick: Arc<EventFd>,
    done: mpsc::Receiver<()>,
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.kick.write(1);
        if let Err(mpsc::RecvTimeoutError::Timeout) = self.done.recv_timeout(RESET_WAIT) {
            tracing::warn!(
                "{}: reset while a request is still running; its reply is dropped",
                self.name
            );
        }
    }
}

pub struct Fs {
    name: String,
    config_space: Vec<u8>,
    kick: Arc<EventFd>,
    /// The queues' notification eventfds, which the worker waits on (see `queue_events`).
    notify: Vec<Arc<EventFd>>,
    event_idx: bool,
    sessions: mpsc::Sender<Session>,
    active: Activation<ActiveSession>,
    counters: Arc<DeviceCounters>,
}

impl Fs {
    /// Opens the share now, so a bad directory fails the VM's build, not the guest's mount.
    /// The worker comes back unstarted: [`FsWorker::spawn`] it before the guest runs.
    pub fn new(
        name: &str,
        cfg: &FsConfig,
        counters: Arc<DeviceCounters>,
    ) -> Result<(Self, FsWorker), ShareError> {
        let fs = open_share(cfg)?;
        let kick = Arc::new(EventFd::new(0).map_err(ShareError::Eventfd)?);
        let notify = QUEUE_SIZES
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ShareError::Eventfd)?;
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut config_space = vec![0u8; FS_TAG_MAX + 4];
        let tag = cfg.tag.as_bytes();
        config_space[..tag.len().min(FS_TAG_MAX)]
            .copy_from_slice(&tag[..tag.len().min(FS_TAG_MAX)]);
        config_space[FS_TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        let (sessions, parked) = mpsc::channel();
        let worker = FsWorker {
            name: name.to_string(),
            server: Arc::new(Server::new(Arc::new(fs))),
            kick: kick.clone(),
            notify: notify.clone(),
            sessions: parked,
            counters: counters.clone(),
        };
        let dev = Fs {
            name: name.to_string(),
            config_space,
            kick,
            notify,
            event_idx: false,
            sessions,
            active: Activation::new(),
            counters,
        };
        Ok((dev, worker))
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }
    fn ack_features(&mut self, features: u64) {
        self.event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext, _ctl: &EventCtl) -> Result<(), ActivateError> {
        let ctx = ctx.expect_queues(QUEUE_SIZES.len())?;
        let view = memory_view(&ctx.mem).map_err(ActivateError::Other)?;
        let mut queues = Vec::new();
        for (i, q) in ctx.queues.iter().enumerate() {
            let mut q17 = queue_017(q).map_err(ActivateError::Other)?;
            virtio_queue_017::QueueT::set_event_idx(&mut q17, self.event_idx);
            if !q.is_valid(&ctx.mem) || !virtio_queue_017::QueueT::is_valid(&q17, &view.mem) {
                return Err(ActivateError::InvalidQueue(i));
            }
            queues.push(q17);
        }
        let queues_at_start = ctx.queues.iter().map(|q| q.state()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = mpsc::channel();
        let session = Session {
            view,
            queues,
            interrupt: ctx.interrupt,
            stop: stop.clone(),
            done: done_tx,
        };
        if self.sessions.send(session).is_err() {
            return Err(ActivateError::Other(format!(
                "{}: the worker thread is gone",
                self.name
            )));
        }
        self.active.activate(ActiveSession {
            name: self.name.clone(),
            queues_at_start,
            stop,
            kick: self.kick.clone(),
            done,
        });
        Ok(())
    }

    /// The worker waits on these itself: a request goes from the guest's kick (KVM's
    /// ioeventfd) straight to the thread that answers it, not through the event loop.
    fn queue_events(&self) -> Option<Vec<EventFd>> {
        self.notify.iter().map(|e| e.try_clone().ok()).collect()
    }

    /// What the queue's ioeventfd does; the transport never calls it for this device
    /// (its notifications go to the worker), the tests and fuzzers do.
    fn queue_notify(&mut self, index: usize, _ctl: &EventCtl) -> Result<(), DeviceError> {
        if let Some(evt) = self.notify.get(index) {
            evt.write(1)
                .map_err(|e| DeviceError::Other(format!("cannot notify the fs worker: {e}")))?;
        }
        Ok(())
    }

    fn reset(&mut self, _ctl: &EventCtl) {
        self.active.reset();
    }

    /// Saved only before the guest's first FUSE request (a template is taken before the
    /// share is mounted): the session's state (inodes, open files) lives in the host's
    /// file system and cannot move to another VM. The worker counts a request before it
    /// answers it, so with a count of 0 nothing is in the used rings yet, and a request
    /// the guest has posted is answered by the restored VM.
    fn queue_states(&self) -> Result<Vec<QueueState>, String> {
        let Some(a) = self.active.get() else {
            return Ok(Vec::new());
        };
        match self.counters.requests.load(Ordering::Acquire) {
            0 => Ok(a.queues_at_start.clone()),
            n => Err(format!(
                "{} has answered {n} FUSE requests; only a share the guest has not mounted can be saved",
                self.name
            )),
        }
    }
}
