//! One pod = one VM: its hypervisor, its agent, where its state lives, and the watchers
//! that report the VM's death and the guest's OOM kills. Built from a [`SandboxBackend`]
//! (hyper-vmm and ttrpc for real, fakes in tests); torn down once, by [`Sandbox::shutdown`].
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper_agent_protocol::agent::{
    self as pb, CreateContainerRequest, CreateSandboxRequest, Storage,
};
use hyper_agent_protocol::{AGENT_VSOCK_PORT, guest};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::agent::ready::ReadyListener;
use crate::agent::{Agent, AgentError, AgentTimeouts};
use crate::config::{Config, SharedFs};
use crate::factory::Shape;
use crate::hypervisor::{
    Disk, HyperVmm, Hypervisor, HypervisorError, NetDevice, SharedDir, SnapshotUse, Stop, VmSpec,
    VmmMetrics, process_alive,
};
use crate::network::{NetworkError, PodNetwork, PortForwarder, TapDevice};
use crate::rootfs;
use crate::share::{SHARE_TAG, Share, ShareError, remove_tree};
use crate::sizing::VmSize;
use crate::startup_trace::{StartupTrace, Step};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error("agent did not answer within {timeout:?}: {last_error}{console}")]
    AgentTimeout {
        timeout: Duration,
        last_error: String,
        console: String,
    },
    #[error("VMM (pid {pid}) exited while the guest was booting{console}")]
    VmmDied { pid: u32, console: String },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(
        "container {0}: this pod's VM holds one container only (hypervisor.shared_fs = \"none\"); use \"virtio-fs\""
    )]
    OneContainerPerVm(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a sandbox is built from.
#[async_trait]
pub trait SandboxBackend: Send + Sync {
    /// The hypervisor of a new VM whose sockets and logs go in `state_dir`.
    fn hypervisor(&self, config: &Config, state_dir: &Path) -> Box<dyn Hypervisor>;
    /// One attempt to reach the agent through the VM's vsock socket.
    async fn connect_agent(
        &self,
        vsock_uds: &Path,
        timeout: Duration,
    ) -> Result<Arc<dyn Agent>, String>;
    /// Called once the agent answers: start whatever else reads from the guest.
    fn agent_ready(&self, _vsock_uds: &Path, _sandbox_id: &str) {}
}

/// hyper-vmm for the VM, ttrpc over hybrid vsock for the agent.
pub struct HyperVmmBackend {
    pub timeouts: AgentTimeouts,
}

impl HyperVmmBackend {
    pub fn new(config: &Config) -> Self {
        Self {
            timeouts: AgentTimeouts {
                request: config.request_timeout(),
                create_container: config.create_container_timeout(),
            },
        }
    }
}

#[async_trait]
impl SandboxBackend for HyperVmmBackend {
    fn hypervisor(&self, config: &Config, state_dir: &Path) -> Box<dyn Hypervisor> {
        Box::new(
            HyperVmm::new(config.hypervisor.path.clone(), state_dir.to_path_buf())
                .jailed(config.hypervisor.jail)
                .with_seccomp(config.hypervisor.seccomp),
        )
    }

    async fn connect_agent(
        &self,
        vsock_uds: &Path,
        timeout: Duration,
    ) -> Result<Arc<dyn Agent>, String> {
        crate::agent::connect(vsock_uds, AGENT_VSOCK_PORT, timeout, self.timeouts)
            .await
            .map(|a| Arc::new(a) as Arc<dyn Agent>)
            .map_err(|e| e.to_string())
    }

    fn agent_ready(&self, vsock_uds: &Path, sandbox_id: &str) {
        crate::agent::log::spawn_relay(vsock_uds.to_path_buf(), sandbox_id.to_string());
    }
}

/// What the sandbox's watchers saw.
#[derive(Debug, Clone, PartialEq)]
pub enum SandboxEvent {
    /// The VMM process is gone (not by `shutdown`).
    VmDied,
    /// The guest OOM-killed a process of this container.
    Oom(String),
}

/// virtio-blk serial of the disk that carries the first container's rootfs.
const ROOTFS_DISK_SERIAL: &str = "rootfs";

/// The disk that hands a container's rootfs image to the guest.
fn rootfs_disk(image: &Path) -> Disk {
    Disk {
        path: image.to_path_buf(),
        read_only: false,
        serial: ROOTFS_DISK_SERIAL.into(),
    }
}

/// What the agent needs to create a container whose rootfs is on the `rootfs_disk`.
fn disk_container_request(id: &str, spec_json: Vec<u8>, stdin: bool) -> CreateContainerRequest {
    let guest_rootfs = format!("{}/{id}/rootfs", guest::CONTAINERS_DIR);
    CreateContainerRequest {
        container_id: id.to_string(),
        oci_spec_json: spec_json,
        storages: vec![Storage {
            driver: guest::DRIVER_BLK.into(),
            source: ROOTFS_DISK_SERIAL.into(),
            fstype: "ext4".into(),
            mount_point: guest_rootfs.clone(),
            ..Default::default()
        }],
        rootfs: guest_rootfs,
        stdin,
        ..Default::default()
    }
}

/// How the pod's containers reach the guest (config `hypervisor.shared_fs`).
enum RootfsPath {
    /// One virtio-fs share for the whole pod.
    Shared(Share),
    /// An ext4 copy of the first container's rootfs; `used` once that container exists.
    Disk { used: std::sync::atomic::AtomicBool },
}

/// Everything a VM boot needs besides the config.
pub struct BootRequest<'a> {
    pub id: &'a str,
    /// Where the boot's steps are marked; logged when the VM is gone.
    pub trace: Arc<StartupTrace>,
    pub hostname: &'a str,
    /// The first container's rootfs on the host (copied into a disk without a share).
    pub first_rootfs: &'a Path,
    pub size: VmSize,
    /// The pod's host cgroup (the sandbox container's `cgroupsPath`), for the VMM.
    pub cgroup: Option<PathBuf>,
    /// The pod's network namespace (CNI's, from the sandbox container's spec), whose
    /// interfaces the VM takes over.
    pub netns: Option<&'a Path>,
}

pub struct Sandbox {
    pub id: String,
    pub state_dir: PathBuf,
    agent: Arc<dyn Agent>,
    /// `None` once shut down: the lock makes concurrent shutdowns wait for the first.
    hypervisor: Mutex<Option<Box<dyn Hypervisor>>>,
    rootfs_path: RootfsPath,
    vmm_pid: Option<u32>,
    /// The host cgroup the VMM joined, removed with the pod.
    cgroup: Option<PathBuf>,
    /// The taps and filters in the pod's network namespace, removed with the pod.
    network: Option<PodNetwork>,
    /// CRI `PortForward` into the guest; stopped with the pod.
    port_forward: std::sync::Mutex<Option<PortForwarder>>,
    watchers: std::sync::Mutex<Vec<JoinHandle<()>>>,
    trace: Arc<StartupTrace>,
}

/// In the state dir: the pid of the process (shim or hyperctl) that runs the sandbox.
pub const OWNER_PID_FILE: &str = "owner.pid";
/// In the state dir: the pid of the VMM.
pub const VMM_PID_FILE: &str = "vmm.pid";

/// Lines of the guest console shown in boot errors.
const CONSOLE_TAIL_LINES: usize = 30;
/// How often the agent is tried while waiting for its ready call.
const READY_POLL: Duration = Duration::from_millis(250);
/// How long a VM restored from a template may take to answer before the pod boots one
/// instead: a restored agent answers at once, or its template is broken.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(10);
/// Host entropy given to a restored guest's RNG (a ChaCha key is 32).
const RESEED_BYTES: usize = 64;

impl Sandbox {
    /// Boots the VM, waits for the agent and creates the sandbox in the guest; then
    /// reports VM death and OOM kills on `events`. On any failure nothing is left running
    /// or mounted and the state dir is gone.
    pub async fn boot(
        config: &Config,
        backend: &dyn SandboxBackend,
        req: BootRequest<'_>,
        events: mpsc::UnboundedSender<SandboxEvent>,
    ) -> Result<Arc<Self>, SandboxError> {
        let (network, taps) = match req.netns {
            Some(netns) => {
                let (network, taps) = PodNetwork::attach(netns).await?;
                (Some(network), taps)
            }
            None => (None, Vec::new()),
        };
        let booted = match crate::state_dir::create_pod_dir(&config.runtime.state_dir, req.id) {
            Ok(state_dir) => {
                let res =
                    Self::boot_in(config, backend, &req, &state_dir, network.as_ref(), &taps).await;
                if res.is_err() {
                    remove_tree(&state_dir);
                }
                res
            }
            Err(e) => Err(e.into()),
        };
        // The VMM holds the taps now (or died with them).
        drop(taps);
        match booted {
            Ok(mut sandbox) => {
                sandbox.network = network;
                let sandbox = Arc::new(sandbox);
                sandbox.spawn_watchers(events);
                Ok(sandbox)
            }
            Err(e) => {
                if let Some(dir) = &req.cgroup {
                    crate::host_cgroup::remove(dir);
                }
                if let Some(n) = &network {
                    n.detach().await;
                }
                Err(e)
            }
        }
    }

    async fn boot_in(
        config: &Config,
        backend: &dyn SandboxBackend,
        req: &BootRequest<'_>,
        state_dir: &Path,
        network: Option<&PodNetwork>,
        taps: &[TapDevice],
    ) -> Result<Self, SandboxError> {
        let (rootfs_path, disks, shares, storages) = match config.hypervisor.shared_fs {
            SharedFs::VirtioFs => {
                let share = Share::create(state_dir)?;
                let dir = share_device(config, &share);
                (
                    RootfsPath::Shared(share),
                    vec![],
                    vec![dir],
                    vec![Share::storage()],
                )
            }
            SharedFs::None => {
                let image = state_dir.join("rootfs.img");
                rootfs::make_image(req.first_rootfs, &image).await?;
                let used = std::sync::atomic::AtomicBool::new(false);
                (
                    RootfsPath::Disk { used },
                    vec![rootfs_disk(&image)],
                    vec![],
                    vec![],
                )
            }
        };
        let mut spec = vm_spec(config, req.size, state_dir);
        spec.disks = disks;
        spec.shares = shares;
        spec.cgroup = req.cgroup.clone();
        spec.nets = net_devices(taps);
        // Snapshots hold no disk device yet: pods with a disk rootfs boot.
        let template = if config.factory.template && matches!(rootfs_path, RootfsPath::Shared(_)) {
            let shape = Shape {
                size: req.size,
                nics: taps.len(),
            };
            match crate::factory::template_for(config, backend, shape).await {
                Ok(t) => {
                    req.trace.mark(Step::TemplateReady);
                    Some(t)
                }
                Err(e) => {
                    tracing::warn!(pod = %req.id, "no VM template, booting instead: {e}");
                    None
                }
            }
        } else {
            None
        };
        let booting = std::time::Instant::now();
        let started = match &template {
            Some(t) => {
                spec.snapshot = Some(SnapshotUse::RestoreFrom(t.files()));
                match Self::start_vm(config, backend, req, state_dir, &spec).await {
                    Ok(started) => Ok(started),
                    Err(e) => {
                        tracing::warn!(
                            pod = %req.id,
                            template = %t.key,
                            "cannot restore the VM template, discarded it and booting instead: {e}"
                        );
                        t.discard();
                        spec.snapshot = None;
                        Self::start_vm(config, backend, req, state_dir, &spec).await
                    }
                }
            }
            None => Self::start_vm(config, backend, req, state_dir, &spec).await,
        };
        let (hypervisor, agent) = started?;
        let vmm_pid = hypervisor.pid();
        req.trace.mark(Step::AgentReady);
        // bench-ctr-run reads this: VMM spawn to the agent answering.
        tracing::info!(
            pod = %req.id,
            boot_ms = booting.elapsed().as_millis() as u64,
            restored = spec.snapshot.is_some(),
            "agent ready"
        );
        backend.agent_ready(&hypervisor.vsock_uds(), req.id);
        let port_forward = match network {
            Some(n) => start_port_forward(n, hypervisor.vsock_uds(), req.id).await,
            None => None,
        };
        let sandbox = Self {
            id: req.id.to_string(),
            state_dir: state_dir.to_path_buf(),
            agent,
            hypervisor: Mutex::new(Some(hypervisor)),
            rootfs_path,
            vmm_pid,
            cgroup: req.cgroup.clone(),
            network: None,
            port_forward: std::sync::Mutex::new(port_forward),
            watchers: Default::default(),
            trace: req.trace.clone(),
        };
        let create = CreateSandboxRequest {
            sandbox_id: req.id.to_string(),
            hostname: req.hostname.to_string(),
            storages,
            interfaces: network
                .map(|n| guest_interfaces(n, spec.snapshot.is_some()))
                .unwrap_or_default(),
            routes: network.map(PodNetwork::routes).unwrap_or_default(),
            // containerd names the sandbox's namespaces by the pid we give it for the
            // pod's tasks (ours), and by CNI's namespace.
            host_task_pid: std::process::id(),
            host_netns: req
                .netns
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ..Default::default()
        };
        if let Err(e) = sandbox.agent.create_sandbox(create).await {
            sandbox.shutdown().await;
            return Err(e.into());
        }
        req.trace.mark(Step::SandboxCreated);
        Ok(sandbox)
    }

    /// Starts the VM of `spec` (booted, or restored from its snapshot) and waits for its
    /// agent; a restored VM gets its own identity first. On failure the VM is stopped.
    async fn start_vm(
        config: &Config,
        backend: &dyn SandboxBackend,
        req: &BootRequest<'_>,
        state_dir: &Path,
        spec: &VmSpec,
    ) -> Result<(Box<dyn Hypervisor>, Arc<dyn Agent>), SandboxError> {
        let restored = spec.snapshot.is_some();
        let mut hypervisor = backend.hypervisor(config, state_dir);
        // Bound before the VMM starts, so the agent's call cannot come too early. A
        // restored agent made its call before the template was saved: poll it instead.
        let ready = match restored {
            true => None,
            false => match ReadyListener::bind(&hypervisor.vsock_uds()) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(pod = %req.id, "no listener for the agent's ready call (polling instead): {e}");
                    None
                }
            },
        };
        hypervisor.start(spec).await?;
        req.trace.mark(Step::VmmSpawned);
        // Who runs this sandbox: `delete` must leave a pod alone while its shim lives.
        if let Err(e) = crate::pid_file::write(&state_dir.join(OWNER_PID_FILE), std::process::id())
        {
            tracing::warn!(pod = %req.id, "write {OWNER_PID_FILE}: {e}");
        }
        if let Some(pid) = hypervisor.pid()
            && let Err(e) = crate::pid_file::write(&state_dir.join(VMM_PID_FILE), pid)
        {
            // What `delete` after a shim crash kills, and what `hyperctl list` shows.
            tracing::warn!(pod = %req.id, "write vmm.pid: {e}");
        }
        let timeout = match restored {
            true => config.boot_timeout().min(RESTORE_TIMEOUT),
            false => config.boot_timeout(),
        };
        let agent = async {
            let agent = wait_for_agent(
                backend,
                hypervisor.as_ref(),
                ready.as_ref(),
                timeout,
                state_dir,
            )
            .await?;
            if restored {
                fresh_identity(agent.as_ref()).await?;
            }
            Ok::<_, SandboxError>(agent)
        }
        .await;
        match agent {
            Ok(agent) => Ok((hypervisor, agent)),
            Err(e) => {
                let _ = hypervisor.stop(Stop::PowerOff).await;
                Err(e)
            }
        }
    }

    /// Reports the VMM's death (through its pidfd, whoever reaps it) and the guest's OOM
    /// kills until `shutdown`.
    fn spawn_watchers(self: &Arc<Self>, events: mpsc::UnboundedSender<SandboxEvent>) {
        let mut watchers = self.watchers.lock().expect("watchers lock");
        if let Some(pid) = self.vmm_pid {
            let events = events.clone();
            let id = self.id.clone();
            let state_dir = self.state_dir.clone();
            watchers.push(tokio::spawn(async move {
                let exited = match crate::pid_file::Process::open(pid) {
                    Ok(vmm) => vmm.exited().await,
                    // Already gone, and reaped.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
                    Err(e) => Err(e),
                };
                if let Err(e) = exited {
                    tracing::warn!(pod = %id, pid, "cannot watch the VMM: {e}");
                    return;
                }
                // Its last words, e.g. the jail naming a seccomp kill.
                let last = std::fs::read_to_string(state_dir.join("vmm.log"))
                    .ok()
                    .and_then(|t| t.lines().last().map(str::to_string))
                    .unwrap_or_default();
                tracing::warn!(pod = %id, pid, vmm_log = %last, "VMM exited");
                let _ = events.send(SandboxEvent::VmDied);
            }));
        }
        let agent = self.agent.clone();
        watchers.push(tokio::spawn(async move {
            while let Ok(container_id) = agent.oom_event().await {
                let _ = events.send(SandboxEvent::Oom(container_id));
            }
        }));
    }

    pub fn agent(&self) -> &Arc<dyn Agent> {
        &self.agent
    }

    /// Makes container `id`'s rootfs and volumes visible to the guest and returns the
    /// request that creates it there. Undo with `release_container`.
    pub fn container_request(
        &self,
        id: &str,
        rootfs: &Path,
        spec_json: Vec<u8>,
        stdin: bool,
    ) -> Result<CreateContainerRequest, SandboxError> {
        match &self.rootfs_path {
            RootfsPath::Shared(share) => {
                let shared = share.add_container(id, rootfs, &spec_json)?;
                Ok(CreateContainerRequest {
                    container_id: id.to_string(),
                    oci_spec_json: shared.spec_json,
                    rootfs: shared.guest_rootfs,
                    stdin,
                    ..Default::default()
                })
            }
            RootfsPath::Disk { used } => {
                if used.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return Err(SandboxError::OneContainerPerVm(id.to_string()));
                }
                Ok(disk_container_request(id, spec_json, stdin))
            }
        }
    }

    /// Takes back what `container_request` exposed to the guest for `id`.
    pub fn release_container(&self, id: &str) {
        if let RootfsPath::Shared(share) = &self.rootfs_path {
            share.remove_container(id);
        }
    }

    pub fn vmm_pid(&self) -> Option<u32> {
        self.vmm_pid
    }

    /// Runs `task` (a server of the pod's) until the sandbox shuts down.
    pub fn keep_task(&self, task: JoinHandle<()>) {
        self.watchers.lock().expect("watchers lock").push(task);
    }

    /// The VMM's counters, within `timeout` (a VM being stopped does not answer).
    pub async fn vmm_metrics(&self, timeout: Duration) -> Result<VmmMetrics, String> {
        let hypervisor = tokio::time::timeout(timeout, self.hypervisor.lock())
            .await
            .map_err(|_| "the VM is being stopped or paused".to_string())?;
        match hypervisor.as_ref() {
            Some(h) => h.metrics(timeout).await.map_err(|e| e.to_string()),
            None => Err("the VM is stopped".into()),
        }
    }

    pub async fn pause(&self) -> Result<(), SandboxError> {
        match self.hypervisor.lock().await.as_ref() {
            Some(h) => Ok(h.pause().await?),
            None => Ok(()),
        }
    }

    pub async fn resume(&self) -> Result<(), SandboxError> {
        match self.hypervisor.lock().await.as_ref() {
            Some(h) => Ok(h.resume().await?),
            None => Ok(()),
        }
    }

    /// Tears the pod down: the sandbox in the guest, the VM, the state dir. Idempotent;
    /// a second caller waits for the first to finish. After a VM death it only cleans up.
    pub async fn shutdown(&self) {
        let mut hypervisor = self.hypervisor.lock().await;
        let Some(mut h) = hypervisor.take() else {
            return;
        };
        // Stopped on purpose: this is no VM death to report.
        for w in self.watchers.lock().expect("watchers lock").drain(..) {
            w.abort();
        }
        let how = if self.vmm_pid.is_none_or(process_alive) {
            // Asked now, off the start path: the VMM's own times of its boot.
            if let Some(t) = h.boot_times().await {
                self.trace.mark_boot_times(&t);
            }
            // Once the agent has destroyed the sandbox nothing in the guest is left to
            // save, and waiting for the guest to reset would only delay the pod's end.
            match self.agent.destroy_sandbox(&self.id).await {
                Ok(()) => Stop::PowerOff,
                Err(e) => {
                    tracing::debug!(pod = %self.id, "DestroySandbox: {e}");
                    Stop::Graceful {
                        grace: Duration::from_secs(2),
                    }
                }
            }
        } else {
            Stop::PowerOff
        };
        if let Err(e) = h.stop(how).await {
            tracing::warn!(pod = %self.id, "stop VM: {e}");
        }
        self.trace.mark(Step::VmStopped);
        remove_tree(&self.state_dir);
        self.trace.mark(Step::StateRemoved);
        // bench-ctr-run reads this line.
        tracing::info!(pod = %self.id, steps = %self.trace, "startup trace");
        if let Some(dir) = &self.cgroup {
            crate::host_cgroup::remove(dir);
        }
        drop(self.port_forward.lock().expect("port forward lock").take());
        if let Some(n) = &self.network {
            n.detach().await;
        }
        tracing::info!(pod = %self.id, "sandbox shut down");
    }
}

/// The user's kernel parameters, and the agent's debug console switch when it is on.
pub(crate) fn kernel_params(config: &Config) -> String {
    let mut params = config.hypervisor.kernel_params.clone();
    if config.agent.debug_console {
        if !params.trim().is_empty() {
            params.push(' ');
        }
        params.push_str(hyper_agent_protocol::debug_console::KERNEL_PARAM);
    }
    params
}

/// The VM every pod of this config and size starts from: no devices yet, no cgroup.
pub(crate) fn vm_spec(config: &Config, size: VmSize, state_dir: &Path) -> VmSpec {
    VmSpec {
        kernel: config.hypervisor.kernel.clone(),
        initrd: config.hypervisor.image.clone(),
        kernel_params: kernel_params(config),
        vcpus: size.vcpus,
        memory_mib: size.memory_mib,
        disks: vec![],
        shares: vec![],
        console_log: config
            .hypervisor
            .debug_console
            .then(|| state_dir.join("console.log")),
        cgroup: None,
        nets: vec![],
        snapshot: None,
    }
}

/// The virtio-fs device that serves the pod's share.
pub(crate) fn share_device(config: &Config, share: &Share) -> SharedDir {
    SharedDir {
        tag: SHARE_TAG.into(),
        path: share.served_dir().to_path_buf(),
        cache: config.hypervisor.virtio_fs_cache.as_str().into(),
    }
}

/// The VMM's network devices on `taps`, in their order.
pub(crate) fn net_devices(taps: &[TapDevice]) -> Vec<NetDevice> {
    taps.iter()
        .map(|t| NetDevice {
            tap_fd: std::os::fd::AsRawFd::as_raw_fd(&t.fd),
            mac: t.mac.clone(),
        })
        .collect()
}

/// The pod's interfaces for the agent; in a VM restored from a template each device
/// still has the template's MAC, which the agent finds it by and replaces.
fn guest_interfaces(network: &PodNetwork, restored: bool) -> Vec<pb::Interface> {
    let mut interfaces = network.interfaces();
    if restored {
        for (i, itf) in interfaces.iter_mut().enumerate() {
            itf.device_hw_addr = crate::factory::template_mac(i);
        }
    }
    interfaces
}

/// A VM restored from a template shares its kernel RNG state and clock with every other
/// VM of that template: the agent mixes in host entropy, reseeds, and sets the clock,
/// before any workload runs. (The hostname comes with CreateSandbox.)
async fn fresh_identity(agent: &dyn Agent) -> Result<(), SandboxError> {
    use std::io::Read;
    let mut seed = vec![0u8; RESEED_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    agent.reseed_random(seed).await?;
    agent.set_guest_time(std::time::SystemTime::now()).await?;
    Ok(())
}

/// Port forwarding for a pod with a network namespace. The pod runs without it (only
/// `kubectl port-forward` needs it) when the kernel cannot steer its loopback: say why.
async fn start_port_forward(
    network: &PodNetwork,
    vsock_uds: PathBuf,
    pod: &str,
) -> Option<PortForwarder> {
    match PortForwarder::start(&network.netns, vsock_uds, pod.to_string()).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(%pod, "no port forwarding for this pod: {e}");
            None
        }
    }
}

/// Retries the agent connection until it answers a health check, the VMM dies or the
/// timeout passes, whichever comes first. Between tries it waits for the agent's ready
/// call, or polls every 25 ms without a listener for it.
pub(crate) async fn wait_for_agent(
    backend: &dyn SandboxBackend,
    hypervisor: &dyn Hypervisor,
    ready: Option<&ReadyListener>,
    timeout: Duration,
    state_dir: &Path,
) -> Result<Arc<dyn Agent>, SandboxError> {
    let start = tokio::time::Instant::now();
    let uds = hypervisor.vsock_uds();
    let mut last_error = String::from("no attempt made");
    while start.elapsed() < timeout {
        if let Some(pid) = hypervisor.pid()
            && !process_alive(pid)
        {
            return Err(SandboxError::VmmDied {
                pid,
                console: console_tail(state_dir),
            });
        }
        let left = timeout.saturating_sub(start.elapsed());
        match backend
            .connect_agent(&uds, left.min(Duration::from_secs(2)))
            .await
        {
            Ok(agent) => match agent.health().await {
                Ok(()) => return Ok(agent),
                Err(e) => last_error = e.to_string(),
            },
            Err(e) => last_error = e,
        }
        let left = timeout.saturating_sub(start.elapsed());
        match ready {
            // Still polled now and then: the call is a hint a guest may never give, and
            // the VMM's death must be noticed.
            Some(r) => {
                r.called(READY_POLL.min(left)).await;
            }
            None => tokio::time::sleep(Duration::from_millis(25).min(left)).await,
        }
    }
    Err(SandboxError::AgentTimeout {
        timeout,
        last_error,
        console: console_tail(state_dir),
    })
}

/// The last lines of the VMM log and guest console, for error messages.
fn console_tail(state_dir: &Path) -> String {
    let mut out = String::new();
    for name in ["vmm.log", "console.log"] {
        if let Ok(text) = std::fs::read_to_string(state_dir.join(name)) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..];
            if !tail.is_empty() {
                out.push_str(&format!("\n--- {name} (last {} lines) ---\n", tail.len()));
                out.push_str(&tail.join("\n"));
            }
        }
    }
    out
}
