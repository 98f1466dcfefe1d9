//! The pod: one sandbox (VM) and its containers, each an init process and exec'd
//! processes, as the state machine the task service (and `hyperctl run`) drives.
//!
//! It owns the rules: create undoes all it did when a step fails; a VM death makes every
//! process exit 255; a container whose start fails is stopped, and when no other
//! container of the pod can still run, the VM goes at once; removing the last container
//! stops the VM and removes its state. Exits and OOM kills go out through [`PodEvents`].
//!
//! Lock discipline: the state lock guards records only; it is never held across an agent
//! call. `create_lock` serialises creates, so only one of them can boot the VM.
pub mod container;
pub mod io;
mod metrics;
pub mod process;
pub mod sandbox_spec;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::api::Mount;
use hyper_agent_protocol::agent::StatsContainerResponse;
use tokio::sync::{Mutex, mpsc};

use crate::agent::{Agent, AgentError, OutStream, ProcessRef};
use crate::config::Config;
use crate::identifier::{self, InvalidId};
use crate::rootfs;
use crate::sandbox::{BootRequest, Sandbox, SandboxBackend, SandboxError, SandboxEvent};
use crate::sizing::vm_size;
use crate::startup_trace::{StartupTrace, Step};
use container::Container;
use process::Process;
pub use process::{Exit, State, Stdio, VM_DIED_EXIT_STATUS};

/// How long an exit report waits for output that makes no progress.
const IO_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Exit status recorded for a process that could not be started.
pub const START_FAILED_EXIT_STATUS: u32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl From<InvalidId> for PodError {
    fn from(e: InvalidId) -> Self {
        PodError::InvalidArgument(e.to_string())
    }
}

pub type PodResult<T> = std::result::Result<T, PodError>;

/// Where the pod reports what happens in the guest on its own.
#[async_trait]
pub trait PodEvents: Send + Sync {
    async fn exited(&self, p: &ProcessRef, exit: Exit);
    async fn oom(&self, container_id: &str);
}

/// A container to create from an OCI bundle.
pub struct NewContainer {
    pub id: String,
    pub bundle: PathBuf,
    /// containerd's rootfs mounts; empty when the bundle's rootfs is ready.
    pub rootfs_mounts: Vec<Mount>,
    pub stdio: Stdio,
}

/// A snapshot of one process's record.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessState {
    pub bundle: PathBuf,
    pub stdio: Stdio,
    pub state: State,
    pub exit: Option<Exit>,
}

#[derive(Default)]
struct PodState {
    sandbox: Option<Arc<Sandbox>>,
    containers: HashMap<String, Container>,
}

pub struct Pod {
    config: Config,
    backend: Arc<dyn SandboxBackend>,
    events: Arc<dyn PodEvents>,
    state: Mutex<PodState>,
    create_lock: Mutex<()>,
    /// The start-up of the VM and of its first container, logged when the VM is gone.
    trace: Arc<StartupTrace>,
    me: Weak<Pod>,
}

/// The rootfs directory of a bundle: the spec's `root.path`, relative to the bundle.
pub fn bundle_rootfs(bundle: &Path, spec: &oci_spec::runtime::Spec) -> PathBuf {
    let root = spec
        .root()
        .as_ref()
        .map_or_else(|| PathBuf::from("rootfs"), |r| r.path().clone());
    if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    }
}

/// The pod (group) id of a container: CRI's sandbox annotation, else the runc-v2 group
/// one (what `ctr` sets), else its own id. Every container of a pod shares one VM.
pub const GROUP_ANNOTATIONS: &[&str] = &[
    "io.kubernetes.cri.sandbox-id",
    "io.containerd.runc.v2.group",
];

/// The id is checked: it names the pod's state dir, and annotations are the user's.
pub fn pod_id(
    container_id: &str,
    annotations: Option<&HashMap<String, String>>,
) -> Result<String, InvalidId> {
    let annotated = annotations.and_then(|a| {
        GROUP_ANNOTATIONS
            .iter()
            .find_map(|k| Some((*k, a.get(*k)?)))
    });
    match annotated {
        Some((key, id)) => {
            identifier::check("pod id", id, format!("annotation {key}"))?;
            Ok(id.clone())
        }
        None => {
            identifier::check("pod id", container_id, "the container id")?;
            Ok(container_id.to_string())
        }
    }
}

pub fn read_spec(bundle: &Path) -> PodResult<(oci_spec::runtime::Spec, Vec<u8>)> {
    let path = bundle.join("config.json");
    let json = std::fs::read(&path)
        .map_err(|e| PodError::InvalidArgument(format!("OCI spec {}: {e}", path.display())))?;
    let spec = serde_json::from_slice(&json)
        .map_err(|e| PodError::InvalidArgument(format!("OCI spec {}: {e}", path.display())))?;
    Ok((spec, json))
}

/// What a failed create has done so far, to undo in reverse.
#[derive(Default)]
struct CreateUndo {
    host_rootfs: Option<PathBuf>,
    booted: Option<Arc<Sandbox>>,
    exposed: Option<(Arc<Sandbox>, String)>,
    in_guest: bool,
}

impl CreateUndo {
    async fn run(self) {
        if let Some((sandbox, id)) = self.exposed {
            if self.in_guest
                && let Err(e) = sandbox.agent().remove_container(&id).await
            {
                tracing::warn!(container = %id, "undo CreateContainer: {e}");
            }
            sandbox.release_container(&id);
        }
        if let Some(sandbox) = self.booted {
            sandbox.shutdown().await;
        }
        if let Some(r) = self.host_rootfs {
            rootfs::unmount(&r);
        }
    }
}

impl Pod {
    /// A pod with `config`, loaded once for the pod's whole life.
    pub fn new(
        config: Config,
        backend: Arc<dyn SandboxBackend>,
        events: Arc<dyn PodEvents>,
        trace: Arc<StartupTrace>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            config,
            backend,
            events,
            state: Mutex::default(),
            create_lock: Mutex::default(),
            trace,
            me: me.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    async fn sandbox(&self) -> PodResult<Arc<Sandbox>> {
        self.state
            .lock()
            .await
            .sandbox
            .clone()
            .ok_or_else(|| PodError::Precondition("no sandbox VM is running".into()))
    }

    async fn agent(&self) -> PodResult<Arc<dyn Agent>> {
        Ok(self.sandbox().await?.agent().clone())
    }

    /// Reads a process's record under the state lock.
    async fn with_process<T>(
        &self,
        p: &ProcessRef,
        f: impl FnOnce(&Container, &Process) -> PodResult<T>,
    ) -> PodResult<T> {
        let state = self.state.lock().await;
        let c = state
            .containers
            .get(&p.container_id)
            .ok_or_else(|| PodError::NotFound(format!("container {}", p.container_id)))?;
        let process = c.process(&p.exec_id).ok_or_else(|| {
            PodError::NotFound(format!("process {:?} in {}", p.exec_id, p.container_id))
        })?;
        f(c, process)
    }

    /// Updates a process's record under the state lock; a missing one is left alone.
    async fn update_process<T>(
        &self,
        p: &ProcessRef,
        f: impl FnOnce(&mut Process) -> T,
    ) -> Option<T> {
        let mut state = self.state.lock().await;
        state
            .containers
            .get_mut(&p.container_id)
            .and_then(|c| c.process_mut(&p.exec_id))
            .map(f)
    }

    /// Creates a container (booting the VM for the pod's first); its stdio is connected.
    pub async fn create(&self, req: NewContainer) -> PodResult<()> {
        identifier::check("container id", &req.id, "the create request")?;
        let _serial = self.create_lock.lock().await;
        if self.state.lock().await.containers.contains_key(&req.id) {
            return Err(PodError::AlreadyExists(format!("container {}", req.id)));
        }
        let mut undo = CreateUndo::default();
        match self.create_steps(&req, &mut undo).await {
            Ok(()) => Ok(()),
            Err(e) => {
                undo.run().await;
                Err(e)
            }
        }
    }

    async fn create_steps(&self, req: &NewContainer, undo: &mut CreateUndo) -> PodResult<()> {
        let (spec, spec_json) = read_spec(&req.bundle)?;
        // Refused before anything is mounted, not only when it would name a new VM.
        pod_id(&req.id, spec.annotations().as_ref())?;
        let rootfs_dir = bundle_rootfs(&req.bundle, &spec);
        if !req.rootfs_mounts.is_empty() {
            rootfs::mount(&req.rootfs_mounts, &rootfs_dir)
                .map_err(|e| PodError::InvalidArgument(e.to_string()))?;
            undo.host_rootfs = Some(rootfs_dir.clone());
        }
        let running = self.state.lock().await.sandbox.clone();
        let sandbox = match running {
            Some(s) => s,
            None => {
                self.trace.follow(&req.id);
                let s = self.boot(&req.id, &spec, &rootfs_dir).await?;
                undo.booted = Some(s.clone());
                s
            }
        };
        let create = sandbox
            .container_request(&req.id, &rootfs_dir, spec_json, !req.stdio.stdin.is_empty())
            .map_err(|e| match e {
                SandboxError::OneContainerPerVm(_) => PodError::Unimplemented(e.to_string()),
                e => PodError::InvalidArgument(e.to_string()),
            })?;
        undo.exposed = Some((sandbox.clone(), req.id.clone()));
        self.trace.mark_container(&req.id, Step::ShareReady);
        sandbox.agent().create_container(create).await?;
        undo.in_guest = true;
        self.trace.mark_container(&req.id, Step::ContainerCreated);

        let mut init = Process::new("", req.stdio.clone());
        let trace = self.trace.clone();
        let cid = req.id.clone();
        let first_output = Box::new(move || trace.mark_container(&cid, Step::FirstOutput));
        connect_stdio(
            sandbox.agent(),
            &ProcessRef::new(&req.id, ""),
            &mut init,
            Some(first_output),
        )
        .map_err(|e| PodError::InvalidArgument(format!("container {} stdio: {e}", req.id)))?;
        let mut state = self.state.lock().await;
        state.sandbox = Some(sandbox);
        state.containers.insert(
            req.id.clone(),
            Container {
                id: req.id.clone(),
                bundle: req.bundle.clone(),
                host_rootfs: undo.host_rootfs.take(),
                init,
                execs: HashMap::new(),
            },
        );
        // Past this point the container exists: nothing to undo.
        *undo = CreateUndo::default();
        Ok(())
    }

    /// Boots the VM for the pod's first container, sized for its spec.
    async fn boot(
        &self,
        container_id: &str,
        spec: &oci_spec::runtime::Spec,
        rootfs_dir: &Path,
    ) -> PodResult<Arc<Sandbox>> {
        let id = pod_id(container_id, spec.annotations().as_ref())?;
        let hostname = spec.hostname().clone().unwrap_or_default();
        let netns = sandbox_spec::pod_netns(spec)
            .map_err(|e| PodError::InvalidArgument(format!("pod {id}: {e}")))?;
        let size = vm_size(&self.config.hypervisor, spec)
            .map_err(|e| PodError::InvalidArgument(e.to_string()))?;
        tracing::info!(pod = %id, vcpus = size.vcpus, memory_mib = size.memory_mib, "booting VM");
        let (tx, rx) = mpsc::unbounded_channel();
        let req = BootRequest {
            id: &id,
            trace: self.trace.clone(),
            hostname: &hostname,
            first_rootfs: rootfs_dir,
            size,
            netns: netns.as_deref(),
            cgroup: spec
                .linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_ref())
                .and_then(|p| {
                    crate::host_cgroup::dir_for(
                        Path::new(crate::host_cgroup::CGROUP_ROOT),
                        &p.to_string_lossy(),
                    )
                }),
        };
        let sandbox = Sandbox::boot(&self.config, self.backend.as_ref(), req, tx)
            .await
            .map_err(|e| match e {
                SandboxError::Rootfs(e) => PodError::InvalidArgument(e.to_string()),
                e => PodError::Sandbox(e),
            })?;
        self.watch_sandbox(Arc::downgrade(&sandbox), rx);
        self.serve_metrics(&sandbox);
        Ok(sandbox)
    }

    fn watch_sandbox(&self, sandbox: Weak<Sandbox>, mut rx: mpsc::UnboundedReceiver<SandboxEvent>) {
        let me = self.me.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let Some(pod) = me.upgrade() else { return };
                match event {
                    SandboxEvent::VmDied => pod.vm_died(&sandbox).await,
                    SandboxEvent::Oom(cid) => pod.events.oom(&cid).await,
                }
            }
        });
    }

    /// The VM is gone under the pod: every process exits 255, host state goes.
    async fn vm_died(&self, which: &Weak<Sandbox>) {
        let (sandbox, exits) = {
            let mut state = self.state.lock().await;
            let current = state.sandbox.as_ref().map(Arc::downgrade);
            if current.is_none_or(|c| !c.ptr_eq(which)) {
                return;
            }
            let sandbox = state.sandbox.take();
            let mut exits = Vec::new();
            for c in state.containers.values_mut() {
                let cid = c.id.clone();
                for p in c.processes_mut() {
                    p.abort_io();
                    if p.set_exited(VM_DIED_EXIT_STATUS) {
                        exits.push((ProcessRef::new(&cid, &p.exec_id), p.exit().expect("set")));
                    }
                }
                c.unmount_rootfs();
            }
            (sandbox, exits)
        };
        if let Some(s) = sandbox {
            s.shutdown().await;
        }
        for (p, exit) in exits {
            self.events.exited(&p, exit).await;
        }
    }

    /// Starts a container's init or an exec. A failed start leaves the process stopped;
    /// when no container of the pod can still run, the VM goes too.
    pub async fn start(&self, p: &ProcessRef) -> PodResult<()> {
        let (stdio, exec_spec) = self
            .with_process(p, |_, process| {
                if process.state != State::Created {
                    return Err(PodError::Precondition(format!(
                        "process {:?} of {} is not in created state",
                        p.exec_id, p.container_id
                    )));
                }
                Ok((process.stdio.clone(), process.exec_spec.clone()))
            })
            .await?;
        let agent = self.agent().await?;
        let started = if p.exec_id.is_empty() {
            agent.start_container(&p.container_id).await
        } else {
            let stdin = !stdio.stdin.is_empty();
            agent
                .exec_process(p, exec_spec.unwrap_or_default(), stdin)
                .await
        };
        if let Err(e) = started {
            self.start_failed(p).await;
            return Err(e.into());
        }
        if p.exec_id.is_empty() {
            self.trace
                .mark_container(&p.container_id, Step::ProcessStarted);
        }
        // An init's stdio was connected at create; an exec's stream exists only now.
        if !p.exec_id.is_empty()
            && let Some(Err(e)) = self
                .update_process(p, |process| connect_stdio(&agent, p, process, None))
                .await
        {
            tracing::warn!(container = %p.container_id, exec = %p.exec_id, "exec stdio: {e}");
        }
        self.update_process(p, |process| process.state = State::Running)
            .await;
        self.spawn_waiter(agent, p.clone());
        Ok(())
    }

    async fn start_failed(&self, p: &ProcessRef) {
        let sandbox = {
            let mut state = self.state.lock().await;
            if let Some(process) = state
                .containers
                .get_mut(&p.container_id)
                .and_then(|c| c.process_mut(&p.exec_id))
            {
                process.abort_io();
                process.set_exited(START_FAILED_EXIT_STATUS);
            }
            let none_can_run = state.containers.values().all(|c| !c.init.is_live());
            if p.exec_id.is_empty() && none_can_run {
                state.sandbox.take()
            } else {
                None
            }
        };
        if let Some(s) = sandbox {
            tracing::info!(pod = %s.id, container = %p.container_id, "start failed and nothing else runs: stopping the VM");
            s.shutdown().await;
        }
    }

    /// Waits in the guest for a started process, lets its output drain, then records
    /// and reports its exit.
    fn spawn_waiter(&self, agent: Arc<dyn Agent>, p: ProcessRef) {
        let me = self.me.clone();
        tokio::spawn(async move {
            let status = match agent.wait_process(&p).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(container = %p.container_id, exec = %p.exec_id, "wait failed, reporting {VM_DIED_EXIT_STATUS}: {e}");
                    VM_DIED_EXIT_STATUS
                }
            };
            let Some(pod) = me.upgrade() else { return };
            if p.exec_id.is_empty() {
                pod.trace.mark_container(&p.container_id, Step::ExitSeen);
            }
            let outputs = pod
                .update_process(&p, |process| std::mem::take(&mut process.outputs))
                .await
                .unwrap_or_default();
            for o in outputs {
                if !o.drain(IO_IDLE_TIMEOUT).await {
                    tracing::warn!(container = %p.container_id, exec = %p.exec_id, "output made no progress for {IO_IDLE_TIMEOUT:?}; closed it");
                }
            }
            let exit = pod
                .update_process(&p, |process| {
                    process.set_exited(status).then(|| process.exit()).flatten()
                })
                .await
                .flatten();
            if let Some(exit) = exit {
                pod.events.exited(&p, exit).await;
            }
        });
    }

    /// Records an exec (containerd's Exec); it runs on `start`.
    pub async fn add_exec(
        &self,
        p: &ProcessRef,
        stdio: Stdio,
        spec_json: Vec<u8>,
    ) -> PodResult<()> {
        let mut state = self.state.lock().await;
        let c = state
            .containers
            .get_mut(&p.container_id)
            .ok_or_else(|| PodError::NotFound(format!("container {}", p.container_id)))?;
        if p.exec_id.is_empty() || c.execs.contains_key(&p.exec_id) {
            return Err(PodError::AlreadyExists(format!("exec id {:?}", p.exec_id)));
        }
        let mut process = Process::new(&p.exec_id, stdio);
        process.exec_spec = Some(spec_json);
        c.execs.insert(p.exec_id.clone(), process);
        Ok(())
    }

    pub async fn state(&self, p: &ProcessRef) -> PodResult<ProcessState> {
        self.with_process(p, |c, process| {
            Ok(ProcessState {
                bundle: c.bundle.clone(),
                stdio: process.stdio.clone(),
                state: process.state,
                exit: process.exit(),
            })
        })
        .await
    }

    /// Waits, without holding any lock, until the process has exited.
    pub async fn wait(&self, p: &ProcessRef) -> PodResult<Exit> {
        let rx = self
            .with_process(p, |_, process| Ok(process.exit_watch()))
            .await?;
        Ok(process::wait_exit(rx).await)
    }

    pub async fn kill(&self, p: &ProcessRef, signal: u32, all: bool) -> PodResult<()> {
        self.with_process(p, |_, process| match process.exit() {
            Some(_) => Err(PodError::NotFound("process already finished".into())),
            None => Ok(()),
        })
        .await?;
        Ok(self.agent().await?.signal_process(p, signal, all).await?)
    }

    /// containerd's CloseIO for stdin: EOF once what was written has reached the process.
    pub async fn close_stdin(&self, p: &ProcessRef) -> PodResult<()> {
        self.with_process(p, |_, process| {
            if let Some(s) = &process.stdin {
                s.close();
            }
            Ok(())
        })
        .await
    }

    /// Forgets a stopped process. Removing a container's last record stops the VM.
    pub async fn delete(&self, p: &ProcessRef) -> PodResult<Option<Exit>> {
        if p.exec_id.is_empty() {
            self.delete_container(&p.container_id).await
        } else {
            self.delete_exec(p).await
        }
    }

    async fn delete_exec(&self, p: &ProcessRef) -> PodResult<Option<Exit>> {
        let (mut process, sandbox) = {
            let mut state = self.state.lock().await;
            let c = state
                .containers
                .get_mut(&p.container_id)
                .ok_or_else(|| PodError::NotFound(format!("container {}", p.container_id)))?;
            let process = c
                .execs
                .remove(&p.exec_id)
                .ok_or_else(|| PodError::NotFound(format!("exec {}", p.exec_id)))?;
            (process, state.sandbox.clone())
        };
        process.abort_io();
        if let Some(s) = sandbox
            && let Err(e) = s.agent().remove_process(p).await
        {
            tracing::warn!(container = %p.container_id, exec = %p.exec_id, "RemoveProcess: {e}");
        }
        Ok(process.exit())
    }

    async fn delete_container(&self, id: &str) -> PodResult<Option<Exit>> {
        let (mut container, sandbox, last) = {
            let mut state = self.state.lock().await;
            let c = state
                .containers
                .get(id)
                .ok_or_else(|| PodError::NotFound(format!("container {id}")))?;
            if matches!(c.init.state, State::Running | State::Paused) {
                return Err(PodError::Precondition(format!(
                    "container {id} is still running"
                )));
            }
            let c = state.containers.remove(id).expect("checked above");
            let last = state.containers.is_empty();
            if last {
                self.trace.mark(Step::DeleteReceived);
            }
            let sandbox = if last {
                state.sandbox.take()
            } else {
                state.sandbox.clone()
            };
            (c, sandbox, last)
        };
        if let Some(sandbox) = &sandbox {
            if let Err(e) = sandbox.agent().remove_container(id).await {
                tracing::debug!(container = %id, "RemoveContainer: {e}");
            }
            sandbox.release_container(id);
            if last {
                sandbox.shutdown().await;
            }
        }
        for p in container.processes_mut() {
            p.abort_io();
        }
        container.unmount_rootfs();
        Ok(container.init.exit())
    }

    /// containerd's Shutdown: stops the VM when no container is left; returns whether
    /// the pod is empty (and the shim may exit).
    pub async fn shutdown(&self) -> bool {
        let sandbox = {
            let mut state = self.state.lock().await;
            if !state.containers.is_empty() {
                return false;
            }
            state.sandbox.take()
        };
        if let Some(s) = sandbox {
            s.shutdown().await;
        }
        true
    }

    pub async fn pids(&self, container_id: &str) -> PodResult<Vec<u32>> {
        Ok(self.agent().await?.list_processes(container_id).await?)
    }

    pub async fn pause(&self, container_id: &str) -> PodResult<()> {
        self.agent().await?.pause_container(container_id).await?;
        self.set_init_state(container_id, State::Paused).await;
        Ok(())
    }

    pub async fn resume(&self, container_id: &str) -> PodResult<()> {
        self.agent().await?.resume_container(container_id).await?;
        self.set_init_state(container_id, State::Running).await;
        Ok(())
    }

    async fn set_init_state(&self, container_id: &str, to: State) {
        self.update_process(&ProcessRef::new(container_id, ""), |p| {
            if p.exit().is_none() {
                p.state = to;
            }
        })
        .await;
    }

    pub async fn resize_tty(&self, p: &ProcessRef, rows: u32, cols: u32) -> PodResult<()> {
        Ok(self.agent().await?.resize_tty(p, rows, cols).await?)
    }

    pub async fn update(&self, container_id: &str, resources_json: Vec<u8>) -> PodResult<()> {
        Ok(self
            .agent()
            .await?
            .update_container(container_id, resources_json)
            .await?)
    }

    pub async fn stats(&self, container_id: &str) -> PodResult<StatsContainerResponse> {
        Ok(self.agent().await?.stats_container(container_id).await?)
    }

    /// PID of the pod's VMM, while it runs.
    pub async fn vmm_pid(&self) -> Option<u32> {
        self.state
            .lock()
            .await
            .sandbox
            .as_ref()
            .and_then(|s| s.vmm_pid())
    }
}

/// Connects a process's stdio FIFOs to its streams in the guest; `first_output` runs
/// when the first byte of either output stream has reached its FIFO.
fn connect_stdio(
    agent: &Arc<dyn Agent>,
    p: &ProcessRef,
    process: &mut Process,
    first_output: Option<io::FirstOutput>,
) -> std::io::Result<()> {
    let first_output = first_output.map(io::OnFirstOutput::new);
    let stdio = process.stdio.clone();
    for (path, which) in [
        (&stdio.stdout, OutStream::Stdout),
        (&stdio.stderr, OutStream::Stderr),
    ] {
        // With a terminal the guest merges stderr into stdout.
        if path.is_empty() || (stdio.terminal && which == OutStream::Stderr) {
            continue;
        }
        let copy = io::copy_output(
            agent.clone(),
            p.clone(),
            which,
            Path::new(path),
            first_output.clone(),
        )
        .map_err(|e| std::io::Error::new(e.kind(), format!("open {path}: {e}")))?;
        process.outputs.push(copy);
    }
    if !stdio.stdin.is_empty() {
        let copy = io::StdinCopy::start(agent.clone(), p.clone(), Path::new(&stdio.stdin))
            .map_err(|e| std::io::Error::new(e.kind(), format!("open {}: {e}", stdio.stdin)))?;
        process.stdin = Some(copy);
    }
    Ok(())
}
