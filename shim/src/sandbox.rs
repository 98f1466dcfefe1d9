//! One pod = one VM: its hypervisor, its agent connection and where its state lives.
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_agent_protocol::AGENT_VSOCK_PORT;
use hyper_agent_protocol::agent::{
    CreateContainerRequest, CreateSandboxRequest, DestroySandboxRequest, HealthRequest, Storage,
    health_response,
};
use hyper_agent_protocol::agent_ttrpc::AgentServiceClient;

use crate::config::{Config, SharedFs};
use crate::hypervisor::{
    Disk, HyperVmm, Hypervisor, HypervisorError, SharedDir, VmSpec, process_alive,
};
use crate::rootfs;
use crate::share::{SHARE_TAG, Share, ShareError, remove_tree};
use crate::sizing::VmSize;

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
    #[error("agent {call}: {cause}")]
    Agent {
        call: &'static str,
        cause: ttrpc::Error,
    },
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(
        "container {0}: this pod's VM holds one container only (hypervisor.shared_fs = \"none\"); use \"virtio-fs\""
    )]
    OneContainerPerVm(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Guest directory under which each container's storages are mounted.
const GUEST_CONTAINERS_DIR: &str = "/run/hyper/containers";
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
    let guest_rootfs = format!("{GUEST_CONTAINERS_DIR}/{id}/rootfs");
    CreateContainerRequest {
        container_id: id.to_string(),
        oci_spec_json: spec_json,
        storages: vec![Storage {
            driver: "blk".into(),
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

pub struct Sandbox {
    pub id: String,
    pub state_dir: PathBuf,
    pub agent: AgentServiceClient,
    hypervisor: Box<dyn Hypervisor>,
    rootfs_path: RootfsPath,
    request_timeout: Duration,
}

/// Lines of the guest console shown in boot errors.
const CONSOLE_TAIL_LINES: usize = 30;

impl Sandbox {
    /// Boots the VM for a pod whose first container's rootfs is `first_rootfs`, waits for
    /// the agent and creates the sandbox in the guest. On any failure the VMM is stopped
    /// and nothing is left running or mounted.
    pub async fn boot(
        config: &Config,
        id: &str,
        hostname: &str,
        first_rootfs: &Path,
        size: VmSize,
    ) -> Result<Self, SandboxError> {
        let state_dir = config.runtime.state_dir.join(id);
        std::fs::create_dir_all(&state_dir)?;
        match Self::boot_in(config, id, hostname, first_rootfs, size, &state_dir).await {
            Ok(s) => Ok(s),
            Err(e) => {
                remove_tree(&state_dir);
                Err(e)
            }
        }
    }

    async fn boot_in(
        config: &Config,
        id: &str,
        hostname: &str,
        first_rootfs: &Path,
        size: VmSize,
        state_dir: &Path,
    ) -> Result<Self, SandboxError> {
        let state_dir = state_dir.to_path_buf();
        let (rootfs_path, disks, shares, storages) = match config.hypervisor.shared_fs {
            SharedFs::VirtioFs => {
                let share = Share::create(&state_dir.join("share"))?;
                let dir = SharedDir {
                    tag: SHARE_TAG.into(),
                    path: share.host_dir().to_path_buf(),
                    cache: config.hypervisor.virtio_fs_cache.as_str().into(),
                };
                (
                    RootfsPath::Shared(share),
                    vec![],
                    vec![dir],
                    vec![Share::storage()],
                )
            }
            SharedFs::None => {
                let image = state_dir.join("rootfs.img");
                rootfs::make_image(first_rootfs, &image).await?;
                let used = std::sync::atomic::AtomicBool::new(false);
                (
                    RootfsPath::Disk { used },
                    vec![rootfs_disk(&image)],
                    vec![],
                    vec![],
                )
            }
        };
        let console_log = state_dir.join("console.log");
        let spec = VmSpec {
            kernel: config.hypervisor.kernel.clone(),
            initrd: config.hypervisor.image.clone(),
            kernel_params: config.hypervisor.kernel_params.clone(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            disks,
            shares,
            console_log: config.hypervisor.debug_console.then(|| console_log.clone()),
        };
        let mut hypervisor: Box<dyn Hypervisor> = Box::new(HyperVmm::new(
            config.hypervisor.path.clone(),
            state_dir.clone(),
        ));
        hypervisor.start(&spec).await?;
        let agent =
            match wait_for_agent(hypervisor.as_ref(), config.boot_timeout(), &state_dir).await {
                Ok(agent) => agent,
                Err(e) => {
                    let _ = hypervisor.stop(Duration::ZERO).await;
                    return Err(e);
                }
            };
        crate::agent::log::spawn_relay(hypervisor.vsock_uds(), id.to_string());
        let sandbox = Self {
            id: id.to_string(),
            state_dir,
            agent,
            hypervisor,
            rootfs_path,
            request_timeout: config.request_timeout(),
        };
        let req = CreateSandboxRequest {
            sandbox_id: id.to_string(),
            hostname: hostname.to_string(),
            storages,
            ..Default::default()
        };
        if let Err(cause) = sandbox.agent.create_sandbox(sandbox.ctx(), &req).await {
            sandbox.shutdown().await;
            return Err(SandboxError::Agent {
                call: "CreateSandbox",
                cause,
            });
        }
        Ok(sandbox)
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

    /// True when more containers can join this VM.
    pub fn takes_more_containers(&self) -> bool {
        matches!(self.rootfs_path, RootfsPath::Shared(_))
    }

    /// A ttrpc context with the configured per-request timeout.
    pub fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(self.request_timeout.as_nanos() as i64)
    }

    pub fn vmm_pid(&self) -> Option<u32> {
        self.hypervisor.pid()
    }

    pub async fn pause(&self) -> Result<(), SandboxError> {
        Ok(self.hypervisor.pause().await?)
    }

    pub async fn resume(&self) -> Result<(), SandboxError> {
        Ok(self.hypervisor.resume().await?)
    }

    /// Tears the pod down: sandbox in the guest, then the VM, then the state dir.
    pub async fn shutdown(mut self) {
        let req = DestroySandboxRequest {
            sandbox_id: self.id.clone(),
            ..Default::default()
        };
        if let Err(e) = self.agent.destroy_sandbox(self.ctx(), &req).await {
            tracing::debug!("DestroySandbox: {e}");
        }
        if let Err(e) = self.hypervisor.stop(Duration::from_secs(2)).await {
            tracing::warn!("stop VM: {e}");
        }
        remove_tree(&self.state_dir);
    }
}

/// Retries the agent connection until it answers a health check, the VMM dies or the
/// timeout passes, whichever comes first.
async fn wait_for_agent(
    hypervisor: &dyn Hypervisor,
    timeout: Duration,
    state_dir: &Path,
) -> Result<AgentServiceClient, SandboxError> {
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
        match crate::agent::connect(&uds, AGENT_VSOCK_PORT, left.min(Duration::from_secs(2))).await
        {
            Ok(agent) => {
                let ctx = ttrpc::context::with_timeout(left.as_nanos() as i64);
                match agent.health(ctx, &HealthRequest::default()).await {
                    Ok(h) if h.status == health_response::Status::SERVING.into() => {
                        return Ok(agent);
                    }
                    Ok(h) => last_error = format!("agent health is {:?}", h.status),
                    Err(e) => last_error = format!("health check: {e}"),
                }
            }
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
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
