//! Host-side isolation by seccomp: each VMM thread runs under the allow list of its kind
//! (Firecracker's design), and any other syscall kills the whole process with SIGSYS, so
//! a violation is the VMM dying loudly rather than an error a compromised thread could
//! ignore.
//!
//! A thread inherits its creator's filter and stacked filters all apply, so each thread
//! is created before its creator narrows itself, and holds exactly its own list:
//! - `Vmm::start` (main thread, after the VM is built and privileges are dropped) spawns
//!   the virtio-fs workers and the vCPUs; each installs its filter first thing
//!   ([`spawn_filtered`]);
//! - then the main thread (event loop and control socket) installs its own, just before
//!   `Vmm::run`.
//!
//! The lists are tables, one file per kind over a common base (`common`); `VmConfig`'s
//! `seccomp: false` (`--no-seccomp`) turns them off for debugging.

mod allow_list;
mod common;
mod fs_worker;
mod kvm;
mod main_thread;
mod vcpu;

#[cfg(test)]
pub(crate) mod child;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

pub use allow_list::AllowList;
pub use seccompiler::BpfProgram;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot compile the {kind} seccomp filter: {why}")]
    Compile { kind: &'static str, why: String },
    #[error("cannot install the seccomp filter: {0}")]
    Install(String),
}

/// The kinds of thread the VMM runs, each with its own allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vcpu,
    /// The event loop (device host sides, control socket) and the teardown.
    Main,
    /// A virtio-fs device's request server.
    FsWorker,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::Main, ThreadKind::FsWorker];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Main => "main",
            ThreadKind::FsWorker => "fs-worker",
        }
    }

    pub fn allow_list(self) -> AllowList {
        match self {
            ThreadKind::Vcpu => vcpu::allow_list(),
            ThreadKind::Main => main_thread::allow_list(),
            ThreadKind::FsWorker => fs_worker::allow_list(),
        }
    }

    pub fn compile(self) -> Result<BpfProgram, SeccompError> {
        self.allow_list()
            .compile()
            .map_err(|e| SeccompError::Compile {
                kind: self.name(),
                why: e.to_string(),
            })
    }
}

/// Every kind's filter, compiled once before any thread needs one.
pub struct Filters {
    vcpu: Arc<BpfProgram>,
    main: Arc<BpfProgram>,
    fs_worker: Arc<BpfProgram>,
}

impl Filters {
    pub fn compile() -> Result<Self, SeccompError> {
        Ok(Filters {
            vcpu: Arc::new(ThreadKind::Vcpu.compile()?),
            main: Arc::new(ThreadKind::Main.compile()?),
            fs_worker: Arc::new(ThreadKind::FsWorker.compile()?),
        })
    }

    pub fn get(&self, kind: ThreadKind) -> Arc<BpfProgram> {
        match kind {
            ThreadKind::Vcpu => self.vcpu.clone(),
            ThreadKind::Main => self.main.clone(),
            ThreadKind::FsWorker => self.fs_worker.clone(),
        }
    }
}

/// Puts the calling thread under `filter` (and no_new_privs), for good.
pub fn install(filter: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(filter).map_err(|e| SeccompError::Install(e.to_string()))
}

/// Spawns a thread that installs `filter` (if any) before it runs `body`, and waits until
/// it has: an error comes back here and `body` never runs unfiltered.
pub fn spawn_filtered(
    builder: std::thread::Builder,
    filter: Option<Arc<BpfProgram>>,
    body: impl FnOnce() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let thread = builder.spawn(move || {
        let installed = filter.as_deref().map_or(Ok(()), install);
        let ok = installed.is_ok();
        let _ = ready_tx.send(installed);
        if ok {
            body();
        }
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(io::Error::other(e))
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other(
                "the thread ended before installing its filter",
            ))
        }
    }
}

/// One line per thread kind: how many syscalls it may make, and which (`*`: only with
/// given arguments).
pub fn report() -> String {
    ThreadKind::ALL
        .iter()
        .map(|k| {
            let list = k.allow_list();
            format!(
                "{}: {} syscalls: {}",
                k.name(),
                list.len(),
                list.names().join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
