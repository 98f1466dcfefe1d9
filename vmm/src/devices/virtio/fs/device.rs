//! The virtio-fs device: config space (tag, number of request queues), a hiprio queue and
//! one request queue, and the worker thread that serves them while the driver is active.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use fuse_backend_rs::api::server::Server;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::memory_view::memory_view;
use super::share::{ShareError, open_share};
use super::worker::{FsServer, Worker, queue_017};
use crate::config::{FS_TAG_MAX, FsConfig};
use crate::devices::virtio::device::{
    ActivateContext, ActivateError, DeviceError, VirtioDevice, read_config_bytes,
};
use crate::devices::virtio::{Activation, TYPE_FS, VIRTIO_F_VERSION_1};
use crate::event_loop::EventCtl;
use crate::metrics::DeviceCounters;

/// Requests in flight per queue; the Linux driver allocates this many.
const QUEUE_SIZE: u16 = 1024;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

/// The handle on the worker thread, which owns the queues: stopping it means setting `stop`
/// and kicking.
struct RunningWorker {
    kick: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.kick.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Fs {
    name: String,
    config_space: Vec<u8>,
    server: Arc<FsServer>,
    counters: Arc<DeviceCounters>,
    active: Activation<RunningWorker>,
}

impl Fs {
    /// Opens the share now, so a bad directory fails the VM's build, not the guest's mount.
    pub fn new(
        name: &str,
        cfg: &FsConfig,
        counters: Arc<DeviceCounters>,
    ) -> Result<Self, ShareError> {
        let fs = open_share(cfg)?;
        // struct virtio_fs_config { u8 tag[36]; le32 num_request_queues; }
        let mut config_space = vec![0u8; FS_TAG_MAX + 4];
        let tag = cfg.tag.as_bytes();
        config_space[..tag.len().min(FS_TAG_MAX)]
            .copy_from_slice(&tag[..tag.len().min(FS_TAG_MAX)]);
        config_space[FS_TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs {
            name: name.to_string(),
            config_space,
            server: Arc::new(Server::new(Arc::new(fs))),
            counters,
            active: Activation::new(),
        })
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
        VIRTIO_F_VERSION_1
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext, _ctl: &EventCtl) -> Result<(), ActivateError> {
        let ctx = ctx.expect_queues(QUEUE_SIZES.len())?;
        let view = memory_view(&ctx.mem).map_err(ActivateError::Other)?;
        let mut queues = Vec::new();
        for (i, q) in ctx.queues.iter().enumerate() {
            let q17 = queue_017(q).map_err(ActivateError::Other)?;
            if !q.is_valid(&ctx.mem) || !virtio_queue_017::QueueT::is_valid(&q17, &view.mem) {
                return Err(ActivateError::InvalidQueue(i));
            }
            queues.push(q17);
        }
        let kick = Arc::new(EventFd::new(0).map_err(ActivateError::Register)?);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            name: self.name.clone(),
            view,
            queues,
            server: self.server.clone(),
            interrupt: ctx.interrupt,
            kick: kick.clone(),
            stop: stop.clone(),
            counters: self.counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("hyper-{}", self.name))
            .spawn(move || worker.run())
            .map_err(ActivateError::Register)?;
        self.active.activate(RunningWorker {
            kick,
            stop,
            thread: Some(thread),
        });
        Ok(())
    }

    fn queue_notify(&mut self, _index: usize, _ctl: &EventCtl) -> Result<(), DeviceError> {
        if let Some(a) = self.active.get() {
            a.kick
                .write(1)
                .map_err(|e| DeviceError::Other(format!("cannot kick the fs worker: {e}")))?;
        }
        Ok(())
    }

    fn reset(&mut self, _ctl: &EventCtl) {
        // Dropping the RunningWorker stops and joins the thread.
        self.active.reset();
    }
}
