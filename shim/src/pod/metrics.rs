//! The pod's metrics endpoint: `metrics.sock` in the sandbox's state dir, served while the
//! sandbox runs, each scrape gathered afresh from every source at once.
use std::sync::Arc;

use tokio::net::UnixListener;

use super::Pod;
use crate::hypervisor::BootTimes;
use crate::metrics::{self, PodSnapshot, SOURCE_TIMEOUT, process};
use crate::sandbox::Sandbox;

impl Pod {
    /// Serves the pod's metrics on the sandbox's `metrics.sock` until the sandbox shuts
    /// down. A pod whose socket cannot be made runs on without one, saying so.
    pub(super) fn serve_metrics(&self, sandbox: &Arc<Sandbox>) {
        let socket = sandbox.state_dir.join(metrics::SOCKET);
        let listener = match UnixListener::bind(&socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(pod = %sandbox.id, "no metrics: bind {}: {e}", socket.display());
                return;
            }
        };
        let (pod, weak_sandbox) = (self.me.clone(), Arc::downgrade(sandbox));
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (pod, sandbox) = (pod.clone(), weak_sandbox.clone());
                tokio::spawn(metrics::http::serve_connection(stream, move || {
                    let (pod, sandbox) = (pod.upgrade(), sandbox.upgrade());
                    async move {
                        match (pod, sandbox) {
                            (Some(pod), Some(sandbox)) => pod.metrics(&sandbox).await.render(),
                            _ => String::new(),
                        }
                    }
                }));
            }
        });
        sandbox.keep_task(server);
    }

    /// What every source of the pod says now; the VMM, the guest and each container are
    /// asked at once, each within [`SOURCE_TIMEOUT`].
    pub async fn metrics(&self, sandbox: &Sandbox) -> PodSnapshot {
        let mut ids: Vec<String> = self.state.lock().await.containers.keys().cloned().collect();
        ids.sort();
        let agent = sandbox.agent();
        let guest = within("GuestMetrics", agent.guest_metrics());
        let containers = futures_util::future::join_all(ids.into_iter().map(|id| async move {
            let stats = within("StatsContainer", agent.stats_container(&id)).await;
            (id, stats)
        }));
        let (vmm, guest, containers) =
            tokio::join!(sandbox.vmm_metrics(SOURCE_TIMEOUT), guest, containers);
        if let Ok(m) = &vmm {
            // The VMM's boot times are there before teardown asks for them.
            self.trace.mark_boot_times(&BootTimes::of(m));
        }
        let containers = containers
            .into_iter()
            .filter_map(|(id, stats)| match stats {
                Ok(s) => Some((id, s)),
                Err(e) => {
                    tracing::debug!(pod = %sandbox.id, container = %id, "metrics: {e}");
                    None
                }
            })
            .collect();
        PodSnapshot {
            pod: sandbox.id.clone(),
            shim: process::read(std::process::id()),
            vmm_process: sandbox.vmm_pid().and_then(process::read_tree),
            vmm: Some(vmm),
            guest: Some(guest),
            containers,
            startup: (self.trace.since_start().into_iter())
                .map(|(step, us)| (step.name(), us as f64 / 1e6))
                .collect(),
        }
    }
}

/// An agent call's answer within [`SOURCE_TIMEOUT`], or why there is none.
async fn within<T>(
    call: &str,
    answer: impl std::future::Future<Output = Result<T, crate::agent::AgentError>>,
) -> Result<T, String> {
    match tokio::time::timeout(SOURCE_TIMEOUT, answer).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("{call}: no answer within {SOURCE_TIMEOUT:?}")),
    }
}
