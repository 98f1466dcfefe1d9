//! containerd's shim v2 entry points: `start` (spawn or reuse the pod's shim), `delete`
//! (clean up after a shim that is gone) and the long-running task service.
pub mod events;
pub mod options;
pub mod stats;
pub mod status;
pub mod task;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{ExitSignal, Shim, publisher::RemotePublisher, spawn};
use containerd_shim::{Config as ShimConfig, DeleteResponse, Error, Flags, StartOpts};

use crate::config::Config;
use crate::pod::{pod_id, read_spec};
use crate::sandbox::{OWNER_PID_FILE, VMM_PID_FILE};
pub use task::TaskService;

pub const RUNTIME_ID: &str = "io.containerd.hyper.v1";

pub struct Service {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

fn bundle_pod_id(container_id: &str, bundle: &Path) -> Result<String, Error> {
    let (spec, _) = read_spec(bundle).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(pod_id(container_id, spec.annotations().as_ref()))
}

#[async_trait]
impl Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let group = bundle_pod_id(&opts.id, Path::new("."))?;
        // spawn() reuses the group's socket when a shim already serves it.
        let address = spawn(opts, &group, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // The shim that ran this container is gone: release what it held on the host.
        let bundle = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        crate::rootfs::unmount(&bundle.join("rootfs"));
        if let Ok(pod) = bundle_pod_id(&self.id, &bundle) {
            // The config the dead shim used, not whatever the default file says now.
            let config = match Config::recorded(&bundle) {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    tracing::warn!("recorded config unreadable, using the default: {e}");
                    Config::load(None).unwrap_or_default()
                }
                None => Config::load(None).unwrap_or_default(),
            };
            kill_orphan_vmm(&config.runtime.state_dir.join(&pod));
        }
        let mut resp = DeleteResponse::new();
        resp.set_exit_status(137);
        resp.set_exited_at(containerd_shim::util::timestamp()?);
        Ok(resp)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService::new(&self.id, &self.namespace, publisher, self.exit.clone())
    }
}

/// The pid in `state_dir/file` if that process is alive and runs `binary`.
fn live_pid(state_dir: &Path, file: &str, binary: &str) -> Option<i32> {
    let pid = std::fs::read_to_string(state_dir.join(file))
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains(binary)
        .then_some(pid)
}

/// Kills the VMM a dead shim left behind and removes the pod's state (unmounting the
/// share). containerd also calls `delete` for each container of a pod whose shim lives
/// on (it does after every task's connection closes): then the pod is left to that shim.
fn kill_orphan_vmm(state_dir: &Path) {
    if let Some(owner) = live_pid(state_dir, OWNER_PID_FILE, "containerd-shim-hyper-v1") {
        tracing::debug!(owner, "the pod's shim is alive: nothing to clean up");
        return;
    }
    if let Some(pid) = live_pid(state_dir, VMM_PID_FILE, "hyper-vmm") {
        tracing::info!(pid, "killing the VMM of a dead shim");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    crate::share::remove_tree(state_dir);
}
