//! containerd's shim v2 entry points: `start` (spawn or reuse the pod's shim), `delete`
//! (clean up after a shim that is gone) and the long-running task service.
pub mod container;
pub mod events;
pub mod options;
pub mod task;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{ExitSignal, Shim, publisher::RemotePublisher, spawn};
use containerd_shim::{Config as ShimConfig, DeleteResponse, Error, Flags, StartOpts};

use crate::config::Config;
pub use task::TaskService;

pub const RUNTIME_ID: &str = "io.containerd.hyper.v1";

/// Annotations naming the pod a container belongs to: every container of a pod shares
/// one shim (and so one VM). CRI's comes first; the runc-v2 one is honoured for `ctr`.
pub const GROUP_ANNOTATIONS: &[&str] = &[
    "io.kubernetes.cri.sandbox-id",
    "io.containerd.runc.v2.group",
];

pub struct Service {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

/// The group (pod) id of a container: the first group annotation present, else its own id.
pub fn grouping(
    id: &str,
    annotations: Option<&std::collections::HashMap<String, String>>,
) -> String {
    annotations
        .and_then(|a| GROUP_ANNOTATIONS.iter().find_map(|k| a.get(*k)))
        .cloned()
        .unwrap_or_else(|| id.to_string())
}

fn read_spec(bundle: &Path) -> Result<oci_spec::runtime::Spec, Error> {
    let path = bundle.join("config.json");
    oci_spec::runtime::Spec::load(&path)
        .map_err(|e| Error::InvalidArgument(format!("OCI spec {}: {e}", path.display())))
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
        let spec = read_spec(Path::new("."))?;
        let group = grouping(&opts.id, spec.annotations().as_ref());
        // spawn() reuses the group's socket when a shim already serves it.
        let address = spawn(opts, &group, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // The shim that ran this container is gone: release what it held on the host.
        let bundle = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        crate::rootfs::unmount(&bundle.join("rootfs"));
        if let Ok(spec) = read_spec(&bundle) {
            let group = grouping(&self.id, spec.annotations().as_ref());
            let config = Config::load(None).unwrap_or_default();
            let state_dir = config.runtime.state_dir.join(&group);
            kill_orphan_vmm(&state_dir);
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

/// Kills the VMM a dead shim left behind, if its pid file names a live hyper-vmm.
fn kill_orphan_vmm(state_dir: &Path) {
    let pid_file: PathBuf = state_dir.join("vmm.pid");
    let Ok(text) = std::fs::read_to_string(&pid_file) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("hyper-vmm") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    crate::share::remove_tree(state_dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn grouping_follows_cri_then_runc_annotations() {
        assert_eq!(grouping("c1", None), "c1");
        let mut a = HashMap::new();
        a.insert("io.containerd.runc.v2.group".to_string(), "g".to_string());
        assert_eq!(grouping("c1", Some(&a)), "g");
        a.insert(
            "io.kubernetes.cri.sandbox-id".to_string(),
            "pod".to_string(),
        );
        assert_eq!(grouping("c1", Some(&a)), "pod");
    }
}
