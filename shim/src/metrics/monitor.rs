//! `hyperctl monitor`: every pod of the host on one endpoint. Each scrape fetches the
//! page of each pod in the state dir from its shim, at once, and merges them, adding
//! `hyper_monitor_pod_up` so a pod whose shim did not answer is seen, not missing.
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_vmm_api::Exposition;
use tokio::net::TcpListener;

use super::http::{fetch_unix, serve_connection};
use super::merge::merge;

/// All pods' pages under `state_dir`, merged, with the monitor's own series first.
pub async fn scrape_all(state_dir: &Path, timeout: Duration) -> String {
    let pods = crate::state_dir::pod_dirs(state_dir).unwrap_or_else(|e| {
        tracing::warn!("list pods in {}: {e}", state_dir.display());
        Vec::new()
    });
    let fetches = pods.iter().map(|(pod, dir)| async move {
        let page = fetch_unix(&dir.join(super::SOCKET), timeout).await;
        if let Err(e) = &page {
            tracing::debug!(pod = %pod, "{e}");
        }
        (pod, page)
    });
    let pages = futures_util::future::join_all(fetches).await;
    let mut own = Exposition::new(&[]);
    let mut f = own.family(
        "hyper_monitor_pod_up",
        "gauge",
        "1 when the pod's shim served its metrics to this scrape.",
    );
    for (pod, page) in &pages {
        f.sample(&[("pod", pod)], u8::from(page.is_ok()));
    }
    let own = own.finish();
    let served = pages.iter().filter_map(|(_, p)| p.as_deref().ok());
    merge(std::iter::once(own.as_str()).chain(served))
}

/// Serves [`scrape_all`] of `state_dir` on `listener` until an accept fails.
pub async fn serve(
    listener: TcpListener,
    state_dir: PathBuf,
    timeout: Duration,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let dir = state_dir.clone();
        tokio::spawn(serve_connection(stream, move || {
            let dir = dir.clone();
            async move { scrape_all(&dir, timeout).await }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_pod_of_the_state_dir_once_and_the_silent_ones_marked_down() {
        let root = tempfile::tempdir().unwrap();
        for pod in ["a", "b"] {
            let dir = root.path().join(pod);
            std::fs::create_dir(&dir).unwrap();
            let listener = tokio::net::UnixListener::bind(dir.join(super::super::SOCKET)).unwrap();
            let page = format!("# HELP up Up.\n# TYPE up gauge\nup{{pod=\"{pod}\"}} 1\n");
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let page = page.clone();
                    tokio::spawn(serve_connection(stream, move || {
                        let page = page.clone();
                        async move { page }
                    }));
                }
            });
        }
        // A pod still booting (no socket yet) and the shim's own dot dir.
        std::fs::create_dir(root.path().join("booting")).unwrap();
        std::fs::create_dir(root.path().join(".templates")).unwrap();
        let page = scrape_all(root.path(), Duration::from_secs(5)).await;
        assert_eq!(
            page,
            "# HELP hyper_monitor_pod_up 1 when the pod's shim served its metrics to this scrape.\n\
             # TYPE hyper_monitor_pod_up gauge\n\
             hyper_monitor_pod_up{pod=\"a\"} 1\n\
             hyper_monitor_pod_up{pod=\"b\"} 1\n\
             hyper_monitor_pod_up{pod=\"booting\"} 0\n\
             # HELP up Up.\n# TYPE up gauge\nup{pod=\"a\"} 1\nup{pod=\"b\"} 1\n"
        );
        let none = scrape_all(&root.path().join("missing"), Duration::from_secs(5)).await;
        assert!(!none.contains("pod="), "{none}");
    }
}
