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
use nix::sys::signal::Signal;

use crate::config::Config;
use crate::identifier::{self, InvalidId};
use crate::pid_file::{self, Recorded};
use crate::pod::{pod_id, read_spec};
use crate::sandbox::{OWNER_PID_FILE, VMM_PID_FILE};
pub use task::TaskService;

pub const RUNTIME_ID: &str = "io.containerd.hyper.v1";
/// What the command lines of the shim and of the VMM contain, for their pid files.
const SHIM_BINARY: &str = "containerd-shim-hyper-v1";
const VMM_BINARY: &str = "hyper-vmm";

pub struct Service {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

/// Where containerd's shim commands (`start`, `delete`) take the container id from.
const ID_FLAG: &str = "the shim's -id flag";

fn invalid(e: InvalidId) -> Error {
    Error::InvalidArgument(e.to_string())
}

/// The pod id of container `container_id` in `bundle`; both ids are checked.
fn bundle_pod_id(container_id: &str, bundle: &Path) -> Result<String, Error> {
    identifier::check("container id", container_id, ID_FLAG).map_err(invalid)?;
    let (spec, _) = read_spec(bundle).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    pod_id(container_id, spec.annotations().as_ref()).map_err(invalid)
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
        // spawn() reuses the group's socket when a shim already serves it. A new shim's
        // start-up trace begins with this process.
        let spawned = crate::startup_trace::process_start_us().to_string();
        let address = spawn(
            opts,
            &group,
            vec![(crate::startup_trace::SPAWNED_ENV, spawned.as_str())],
        )
        .await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let bundle = std::env::current_dir().map_err(|e| Error::Other(e.to_string()))?;
        release_dead_shim(&self.id, &bundle)?;
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

/// The shim that ran container `container_id` of `bundle` is gone: releases what it held
/// on the host. A bad container or pod id is refused before anything is touched: the pod
/// id names the directory removed.
fn release_dead_shim(container_id: &str, bundle: &Path) -> Result<(), Error> {
    identifier::check("container id", container_id, ID_FLAG).map_err(invalid)?;
    crate::rootfs::unmount(&bundle.join("rootfs"));
    // Without a spec there is no pod to find.
    let Ok((spec, _)) = read_spec(bundle) else {
        return Ok(());
    };
    let pod = pod_id(container_id, spec.annotations().as_ref()).map_err(invalid)?;
    // The config the dead shim used, not whatever the default file says now.
    let config = match Config::recorded(bundle) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::warn!("recorded config unreadable, using the default: {e}");
            Config::load(None).unwrap_or_default()
        }
        None => Config::load(None).unwrap_or_default(),
    };
    kill_orphan_vmm(&config.runtime.state_dir.join(&pod));
    Ok(())
}

/// Kills the VMM a dead shim left behind and removes the pod's state (unmounting the
/// share). containerd also calls `delete` for each container of a pod whose shim lives
/// on (it does after every task's connection closes): then the pod is left to that shim.
fn kill_orphan_vmm(state_dir: &Path) {
    match pid_file::read_live(&state_dir.join(OWNER_PID_FILE), SHIM_BINARY) {
        Recorded::Live(owner) => {
            tracing::debug!(
                owner = owner.pid,
                "the pod's shim is alive: nothing to clean up"
            );
            return;
        }
        Recorded::Unverified(owner) => {
            tracing::debug!(
                owner,
                "the pod's shim may be alive (pid-only file): leaving it"
            );
            return;
        }
        Recorded::Gone => {}
    }
    match pid_file::read_live(&state_dir.join(VMM_PID_FILE), VMM_BINARY) {
        Recorded::Live(vmm) => {
            tracing::info!(pid = vmm.pid, "killing the VMM of a dead shim");
            if let Err(e) = vmm.signal(Signal::SIGKILL) {
                tracing::warn!(pid = vmm.pid, "kill the VMM: {e}");
            }
        }
        Recorded::Unverified(pid) => {
            // Without a start time the pid may be another process by now.
            tracing::warn!(pid, "not killing the VMM: its pid file has no start time");
        }
        Recorded::Gone => {}
    }
    crate::share::remove_tree(state_dir);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// `delete` after a dead shim, with ids from the flag and the bundle's annotations:
    /// a bad one is refused and nothing is removed, a good one removes its pod's state.
    #[test]
    fn a_bad_id_makes_delete_refuse_and_remove_nothing() {
        let cri = "io.kubernetes.cri.sandbox-id";
        // Stands for the absolute path of the test's `outside` dir.
        const OUTSIDE: &str = "<outside>";
        // (case, container id, pod id annotation, error wanted)
        let cases: Vec<(&str, &str, Option<&str>, Option<&str>)> = vec![
            ("good pod id", "c1", Some("victim"), None),
            ("good container id as the pod id", "victim", None, None),
            (
                "pod id escaping the state dir",
                "c1",
                Some("../victim"),
                Some("pod id \"../victim\" from annotation io.kubernetes.cri.sandbox-id"),
            ),
            (
                "container id escaping the state dir",
                "../victim",
                None,
                Some("container id \"../victim\" from the shim's -id flag"),
            ),
            (
                "absolute pod id (to the outside dir)",
                "c1",
                Some(OUTSIDE),
                Some("from annotation io.kubernetes.cri.sandbox-id is not"),
            ),
        ];
        let mut failures = Vec::new();
        for (name, container_id, pod, want_error) in cases {
            let dir = tempfile::tempdir().unwrap();
            let state_root = dir.path().join("state");
            // Where a `../victim` pod id would point, and where `victim` really lives.
            let outside = dir.path().join("victim");
            let inside = state_root.join("victim");
            for d in [&outside, &inside] {
                std::fs::create_dir_all(d).unwrap();
                std::fs::write(d.join("keep"), "x").unwrap();
            }
            let bundle = dir.path().join("bundle");
            std::fs::create_dir_all(&bundle).unwrap();
            let mut spec = oci_spec::runtime::Spec::default();
            if let Some(pod) = pod {
                let pod = if pod == OUTSIDE {
                    outside.display().to_string()
                } else {
                    pod.to_string()
                };
                spec.set_annotations(Some(HashMap::from([(cri.to_string(), pod)])));
            }
            std::fs::write(
                bundle.join("config.json"),
                serde_json::to_vec(&spec).unwrap(),
            )
            .unwrap();
            let mut config = Config::default();
            config.runtime.state_dir = state_root.clone();
            crate::config::record(&config, &bundle).unwrap();

            let got = release_dead_shim(container_id, &bundle);
            match (&got, want_error) {
                (Ok(()), None) => {
                    if inside.exists() {
                        failures.push(format!("{name}: the pod's state dir is left"));
                    }
                }
                (Err(Error::InvalidArgument(m)), Some(want)) if m.contains(want) => {
                    if !inside.join("keep").exists() {
                        failures.push(format!("{name}: the state dir's pod was removed"));
                    }
                }
                _ => failures.push(format!("{name}: got {got:?}, want error {want_error:?}")),
            }
            if !outside.join("keep").exists() {
                failures.push(format!(
                    "{name}: a directory outside the state dir was removed"
                ));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
