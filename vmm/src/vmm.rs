//! A built VM and the loop that runs it: vCPU threads do port I/O and MMIO, the main
//! thread serves device events and the control socket until the guest resets, fails, or
//! is stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::api::{ApiServer, CONN_SUB_BASE, LISTENER_SUB, Reply, Request, VmState};
use crate::builder::BuildError;
use crate::device_manager::DeviceManager;
use crate::devices::bus::lock;
use crate::devices::legacy::SerialOutput;
use crate::devices::virtio::fs::FsWorker;
use crate::event_loop::EventLoop;
use crate::metrics::Metrics;
use crate::persist::SnapshotFiles;
use crate::seccomp::{Filters, SeccompError, ThreadKind};
use crate::vstate::kvm::open_kvm;
use crate::vstate::memory::create_guest_memory;
use crate::vstate::vcpu::{
    Vcpu, VcpuContext, VcpuError, VcpuSet, VmControl, VmExit, install_kick_handler,
};
use crate::vstate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot start the {name} worker thread: {source}")]
    Worker {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

const SUB_EXIT: u32 = 0;
const SUB_RESET: u32 = 1;
const SUB_SIGNAL: u32 = 3;
/// How long pause waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Vmm {
    pub kvm: Kvm,
    pub vm: Vm,
    pub mem: GuestMemoryMmap,
    pub event_loop: EventLoop,
    pub devices: DeviceManager,
    pub control: Arc<VmControl>,
    pub metrics: Arc<Metrics>,
    pub vcpus: Vec<Vcpu>,
    /// Device threads `start` spawns (parked until their device is activated).
    pub fs_workers: Vec<FsWorker>,
    /// The per-thread seccomp filters; `None` runs unfiltered (tests, `--no-seccomp`).
    pub seccomp: Option<Filters>,
    running: Option<VcpuSet>,
    reset_evt: EventFd,
    api: Option<ApiServer>,
    stop_deadline: Option<Instant>,
    pub stop_timeout: Duration,
    /// When the process started: what the boot metrics count from.
    process_start: Instant,
    /// The MSRs a snapshot saves: every one KVM lists for this host.
    pub(crate) msr_indices: Vec<u32>,
    /// Where a `snapshot` request saves the VM (`snapshot.save_to`, opened at start).
    pub snapshot_to: Option<SnapshotFiles>,
}

impl Vmm {
    /// KVM, guest memory, the VM with its interrupt controllers, the legacy devices and
    /// configured (not yet started) vCPUs. Boot state is the builder's job.
    pub fn new(
        mem_size: u64,
        num_vcpus: u8,
        serial_out: SerialOutput,
        start: Instant,
    ) -> Result<Vmm, BuildError> {
        let kvm = open_kvm()?;
        let mem = create_guest_memory(mem_size)?;
        let mut vmm = Vmm::assemble(kvm, mem, serial_out, start)?;
        let cpuid = crate::vstate::vcpu::supported_cpuid(&vmm.kvm)?;
        for id in 0..num_vcpus {
            let vcpu = Vcpu::new(&vmm.vm.fd, id)?;
            vcpu.configure(&cpuid, num_vcpus)?;
            vmm.vcpus.push(vcpu);
        }
        Ok(vmm)
    }

    /// Everything but the vCPUs, around guest memory `mem`: a new VM's or a restored one's.
    pub(crate) fn assemble(
        kvm: Kvm,
        mem: GuestMemoryMmap,
        serial_out: SerialOutput,
        start: Instant,
    ) -> Result<Vmm, BuildError> {
        let vm = Vm::new(&kvm)?;
        vm.register_memory(&mem)?;
        let metrics = Arc::new(Metrics::default());
        let event_loop = EventLoop::new().map_err(BuildError::EventLoop)?;
        let control = VmControl::new().map_err(BuildError::EventLoop)?;
        let reset_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(BuildError::EventLoop)?;
        let own = event_loop.own_ctl();
        own.add(
            std::os::fd::AsRawFd::as_raw_fd(&control.exit_evt),
            EventSet::IN,
            SUB_EXIT,
        )
        .map_err(BuildError::EventLoop)?;
        own.add(
            std::os::fd::AsRawFd::as_raw_fd(&reset_evt),
            EventSet::IN,
            SUB_RESET,
        )
        .map_err(BuildError::EventLoop)?;

        if let Some(fd) = termination_fd() {
            own.add(fd, EventSet::IN, SUB_SIGNAL)
                .map_err(BuildError::EventLoop)?;
        }

        let mut devices = DeviceManager::new();
        devices.add_legacy(
            &vm,
            serial_out,
            reset_evt.try_clone().map_err(BuildError::EventLoop)?,
            start,
            metrics.boot_time_us.clone(),
        )?;
        // Read now, while any syscall is allowed: what a snapshot saves of each vCPU.
        let msr_indices = kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .unwrap_or_default();
        Ok(Vmm {
            kvm,
            vm,
            mem,
            event_loop,
            devices,
            control,
            metrics,
            vcpus: Vec::new(),
            fs_workers: Vec::new(),
            seccomp: None,
            running: None,
            reset_evt,
            api: None,
            stop_deadline: None,
            stop_timeout: Duration::from_millis(crate::config::DEFAULT_STOP_TIMEOUT_MS),
            process_start: start,
            msr_indices,
            snapshot_to: None,
        })
    }

    pub fn set_api(&mut self, api: ApiServer) {
        self.api = Some(api);
    }

    /// Starts the device worker threads, then every vCPU thread, each under its seccomp
    /// filter when `seccomp` is set. Call on the main thread once privileges are dropped
    /// (threads inherit them), and before [`Vmm::lock_down_main_thread`] (they would
    /// inherit its filter too).
    pub fn start(&mut self) -> Result<(), StartError> {
        let filter = |kind| self.seccomp.as_ref().map(|f| f.get(kind));
        for worker in self.fs_workers.drain(..) {
            let name = worker.name.clone();
            worker
                .spawn(filter(ThreadKind::FsWorker))
                .map_err(|source| StartError::Worker { name, source })?;
        }
        install_kick_handler()?;
        let ctx = VcpuContext {
            io_bus: self.devices.io_bus.clone(),
            mmio_bus: self.devices.mmio_bus.clone(),
            mem: self.mem.clone(),
            control: self.control.clone(),
            metrics: self.metrics.clone(),
        };
        let mut threads = Vec::new();
        for vcpu in self.vcpus.drain(..) {
            threads.push(vcpu.start(ctx.clone(), filter(ThreadKind::Vcpu))?);
        }
        self.running = Some(VcpuSet {
            threads,
            control: self.control.clone(),
        });
        self.metrics.vcpus_started_us.store(
            self.process_start.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    /// Puts the calling thread under the main thread's seccomp filter, if `seccomp` is set.
    /// Call on the thread that will [`Vmm::run`], after [`Vmm::start`].
    pub fn lock_down_main_thread(&self) -> Result<(), SeccompError> {
        match &self.seccomp {
            Some(f) => crate::seccomp::install(&f.get(ThreadKind::Main)),
            None => Ok(()),
        }
    }

    /// Serves events until the VM ends, then stops the vCPUs and returns why it ended.
    pub fn run(&mut self) -> VmExit {
        loop {
            if let Some(why) = self.control.exit_reason() {
                self.stop_vcpus();
                return why;
            }
            let timeout = match self.stop_deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        tracing::warn!("guest did not stop in time; stopping it");
                        self.control.request_exit(VmExit::Stopped);
                        continue;
                    }
                    left.as_millis().clamp(1, i32::MAX as u128) as i32
                }
                None => -1,
            };
            let own = match self.event_loop.run_once(timeout) {
                Ok(own) => own,
                Err(e) => {
                    self.control
                        .request_exit(VmExit::Error(format!("event loop failed: {e}")));
                    continue;
                }
            };
            for ev in own {
                self.handle_own_event(ev.sub);
            }
        }
    }

    fn handle_own_event(&mut self, sub: u32) {
        match sub {
            SUB_EXIT => {
                let _ = self.control.exit_evt.read();
            }
            SUB_RESET => {
                let _ = self.reset_evt.read();
                self.control.request_exit(VmExit::Reset);
            }
            SUB_SIGNAL => {
                if let Some(fd) = termination_fd() {
                    let mut b = [0u8; 8];
                    // SAFETY: reading 8 bytes from our eventfd into a local buffer.
                    let _ = unsafe { libc::read(fd, b.as_mut_ptr() as *mut libc::c_void, 8) };
                }
                tracing::info!("termination signal: stopping the VM");
                self.control.request_exit(VmExit::Stopped);
            }
            LISTENER_SUB => {
                let ctl = self.event_loop.own_ctl();
                if let Some(api) = self.api.as_mut() {
                    api.accept(&ctl);
                }
            }
            s if s >= CONN_SUB_BASE => {
                let ctl = self.event_loop.own_ctl();
                let reqs = match self.api.as_mut() {
                    Some(api) => api.read_requests(s, &ctl),
                    None => return,
                };
                for req in reqs {
                    let reply = match req {
                        Ok(req) => self.handle_request(req),
                        Err(why) => Reply::error(why),
                    };
                    if let Some(api) = self.api.as_mut() {
                        api.respond(s, &reply, &ctl);
                    }
                }
            }
            _ => {}
        }
    }

    /// Answers one control request.
    pub fn handle_request(&mut self, req: Request) -> Reply {
        match req {
            Request::Ping => Reply::with_state(if self.control.is_paused() {
                VmState::Paused
            } else {
                VmState::Running
            }),
            Request::Metrics => Reply::with_metrics(self.metrics.snapshot()),
            Request::Pause => match &self.running {
                Some(set) if set.pause(PAUSE_TIMEOUT) => Reply::done(),
                Some(_) => Reply::error("vCPUs did not pause in time"),
                None => Reply::error("VM is not running"),
            },
            Request::Resume => match &self.running {
                Some(set) => {
                    set.resume();
                    Reply::done()
                }
                None => Reply::error("VM is not running"),
            },
            Request::Stop => {
                self.request_stop();
                Reply::done()
            }
            Request::Snapshot => match self.snapshot_to.take() {
                Some(files) => {
                    let saved = self.snapshot(&files);
                    self.snapshot_to = Some(files);
                    match saved {
                        Ok(()) => Reply::done(),
                        Err(e) => Reply::error(format!("snapshot: {e}")),
                    }
                }
                None => Reply::error("snapshot: the config names no snapshot.save_to files"),
            },
            Request::PowerOff => {
                tracing::info!("power off: stopping the VM");
                self.control.request_exit(VmExit::Stopped);
                Reply::done()
            }
        }
    }

    /// Graceful stop: Ctrl-Alt-Del to the guest, and a hard stop if it has not reset by
    /// the deadline. A paused guest cannot react, so it stops at once.
    pub fn request_stop(&mut self) {
        if self.control.is_paused() || self.running.is_none() {
            self.control.request_exit(VmExit::Stopped);
            return;
        }
        if self.stop_deadline.is_none() {
            let delivered = self.devices.i8042.as_ref().is_some_and(|i8042| {
                let mut dev = lock(i8042);
                // Without a keyboard driver the guest cannot see the keys: do not wait.
                dev.driver_seen() && {
                    dev.send_ctrl_alt_del();
                    true
                }
            });
            if !delivered {
                tracing::info!("guest has no i8042 driver: stopping without waiting");
                self.control.request_exit(VmExit::Stopped);
                return;
            }
            self.stop_deadline = Some(Instant::now() + self.stop_timeout);
        }
    }

    /// The running vCPUs, once started.
    pub(crate) fn running(&self) -> Option<&VcpuSet> {
        self.running.as_ref()
    }

    fn stop_vcpus(&mut self) {
        if let Some(mut set) = self.running.take() {
            set.stop();
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.stop_vcpus();
    }
}

/// The eventfd SIGTERM/SIGINT/SIGHUP write to, once handlers are installed (-1 before).
static TERM_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

fn termination_fd() -> Option<i32> {
    let fd = TERM_FD.load(std::sync::atomic::Ordering::SeqCst);
    (fd >= 0).then_some(fd)
}

extern "C" fn on_termination(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = TERM_FD.load(std::sync::atomic::Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is a local u64.
        unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
    }
}

/// Makes SIGTERM, SIGINT and SIGHUP stop the VM cleanly (sockets removed, exit status 0)
/// instead of killing the process. Call once, before building the VM.
pub fn install_termination_handlers() -> std::io::Result<()> {
    // SAFETY: a fresh eventfd; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    TERM_FD.store(fd, std::sync::atomic::Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        vmm_sys_util::signal::register_signal_handler(sig, on_termination)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(())
}
