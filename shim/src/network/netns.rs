//! Running code inside another network namespace: on a thread of its own, which enters
//! the namespace and ends with the job, so no other thread of the shim (a tokio worker,
//! a blocking-pool thread that would be reused) ever runs in the pod's namespace.
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path:?}: {cause}")]
    Open {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("enter network namespace {path:?}: {cause}")]
    Enter { path: PathBuf, cause: nix::Error },
    #[error("a thread for network namespace {0:?} could not run: {1}")]
    Thread(PathBuf, std::io::Error),
}

/// Opens the network namespace at `path`.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|cause| NetnsError::Open {
        path: path.to_path_buf(),
        cause,
    })
}

/// Runs `job` (with a current-thread tokio runtime of its own, for rtnetlink) inside the
/// network namespace at `path`, and returns its result.
pub async fn run_in<F, Fut, T, E>(path: &Path, job: F) -> Result<T, E>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>>,
    T: Send + 'static,
    E: From<NetnsError> + Send + 'static,
{
    run_in_opened(open(path)?, path, job).await
}

/// [`run_in`] for a namespace already open as `ns` (`path` names it in errors).
pub async fn run_in_opened<F, Fut, T, E>(ns: File, path: &Path, job: F) -> Result<T, E>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>>,
    T: Send + 'static,
    E: From<NetnsError> + Send + 'static,
{
    let owned = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let res = (|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|cause| {
                    NetnsError::Enter {
                        path: owned.clone(),
                        cause,
                    }
                })?;
                drop(ns);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetnsError::Thread(owned.clone(), e))?;
                rt.block_on(job())
            })();
            let _ = tx.send(res);
        })
        .map_err(|e| NetnsError::Thread(path.to_path_buf(), e))?;
    rx.await.unwrap_or_else(|_| {
        Err(NetnsError::Thread(
            path.to_path_buf(),
            std::io::Error::other("the thread panicked"),
        )
        .into())
    })
}
