//! The VMM as the shim sees it. The shim never touches KVM: it asks a `Hypervisor` to
//! start, stop, pause and resume a VM and to name the socket that reaches the guest's
//! vsock. `hyper_vmm` is the one backend today.
pub mod hyper_vmm;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
pub use hyper_vmm_api::Metrics as VmmMetrics;

pub use hyper_vmm::HyperVmm;

/// What a VM is made of, decided by the sandbox before boot.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel parameters; the backend adds console, reboot and device entries.
    pub kernel_params: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Disks attached at boot; the agent finds each by its serial.
    pub disks: Vec<Disk>,
    /// Host directories shared with virtio-fs; the agent mounts each by its tag.
    pub shares: Vec<SharedDir>,
    /// Keep the guest's serial console in this file.
    pub console_log: Option<PathBuf>,
    /// The host cgroup the VMM runs in (the pod's), if any.
    pub cgroup: Option<PathBuf>,
    /// virtio-net devices, each backed by an open tap.
    pub nets: Vec<NetDevice>,
    /// Save the VM for [`Hypervisor::snapshot`], or restore it instead of booting.
    pub snapshot: Option<SnapshotUse>,
}

/// A VM snapshot's two files.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotFiles {
    /// The VM's state (vCPUs, irqchip, clock, devices).
    pub state: PathBuf,
    /// Guest memory, mapped copy-on-write by a restored VM.
    pub memory: PathBuf,
}

/// What a VM does with a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotUse {
    /// Boots, and saves itself here when asked ([`Hypervisor::snapshot`]).
    SaveTo(SnapshotFiles),
    /// Goes on from this snapshot instead of booting: the spec's shape and devices must
    /// be those of the saved VM (their host backends may differ).
    RestoreFrom(SnapshotFiles),
}

/// A virtio-net device on a tap the caller opened (and keeps open until `start` returns;
/// the VMM inherits it).
#[derive(Debug, Clone, PartialEq)]
pub struct NetDevice {
    pub tap_fd: std::os::fd::RawFd,
    /// The guest's MAC address.
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SharedDir {
    pub tag: String,
    pub path: PathBuf,
    /// virtio-fs cache mode: none, auto or always.
    pub cache: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
    /// virtio-blk serial (at most 20 bytes, the virtio limit).
    pub serial: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("VMM binary {0:?} not found (set hypervisor.path in the config)")]
    BinaryNotFound(PathBuf),
    #[error("guest {what} {path:?} not found (set hypervisor.{what} in the config)")]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("start VMM {binary:?}: {cause}")]
    Spawn {
        binary: PathBuf,
        cause: std::io::Error,
    },
    #[error("VMM exited during boot with status {status}; last console lines:\n{console}")]
    DiedDuringBoot { status: String, console: String },
    #[error("VMM control socket {path:?}: {message}")]
    Control { path: PathBuf, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Starts the VM; returns once the VMM process runs (the guest may still be booting).
    async fn start(&mut self, spec: &VmSpec) -> Result<(), HypervisorError>;
    /// Stops the VM as `how` says; the VMM process is gone when this returns.
    async fn stop(&mut self, how: Stop) -> Result<(), HypervisorError>;
    async fn pause(&self) -> Result<(), HypervisorError>;
    async fn resume(&self) -> Result<(), HypervisorError>;
    /// Pauses the VM and saves it to the spec's [`SnapshotUse::SaveTo`] files; the VM
    /// stays paused.
    async fn snapshot(&self) -> Result<(), HypervisorError>;
    /// The unix socket of the guest's hybrid vsock.
    fn vsock_uds(&self) -> PathBuf;
    /// PID of the VMM process, while it runs.
    fn pid(&self) -> Option<u32>;
    /// The VMM's counters (exits, device requests and bytes, boot times), answered
    /// within `timeout`. The VMM is as untrusted as its guest: these are its word.
    async fn metrics(&self, timeout: Duration) -> Result<VmmMetrics, HypervisorError>;
    /// When the VM's vCPUs started and its guest reached `/init`, by the VMM's clock;
    /// `None` when the VMM cannot say soon (asked on the way to stopping the VM, which
    /// has its own timeout).
    async fn boot_times(&self) -> Option<BootTimes> {
        match self.metrics(BOOT_TIMES_TIMEOUT).await {
            Ok(m) => Some(BootTimes::of(&m)),
            Err(e) => {
                tracing::debug!("VMM boot times: {e}");
                None
            }
        }
    }
}

/// How long the start-up trace waits for the VMM's own boot times.
const BOOT_TIMES_TIMEOUT: Duration = Duration::from_secs(1);

/// How to stop a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Ask the guest to reset (Ctrl-Alt-Del) and kill the VMM if it has not exited
    /// after `grace`: for a guest that may still hold data to write back.
    Graceful { grace: std::time::Duration },
    /// Stop the VM at once, without asking the guest: its work is done (the agent has
    /// destroyed the sandbox and unmounted its storages) or it never started.
    PowerOff,
}

/// Boot steps the VMM times itself, in µs since its process started (0: not yet).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BootTimes {
    pub vcpus_started_us: u64,
    pub guest_init_us: u64,
    /// A VM restored from a template: when the VMM had restored it (0: it booted).
    pub restored_us: u64,
}

impl BootTimes {
    /// The boot times among the VMM's counters.
    pub fn of(m: &VmmMetrics) -> Self {
        BootTimes {
            vcpus_started_us: m.vcpus_started_us,
            guest_init_us: m.boot_time_us,
            restored_us: m.restored_us,
        }
    }
}

/// True while `pid` exists and is not a zombie (a zombie is dead, only not yet reaped).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
