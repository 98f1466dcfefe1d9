//! containerd's task API (v2), call by call, on top of the pod's `Sandbox`.
//!
//! Lock discipline: the state lock is held to read or update records, never across a
//! call that waits on the guest for long (Wait, ReadStdout); agent calls that the guest
//! answers promptly run with a per-request timeout.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe};
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::protos::api::{self, ProcessInfo};
use containerd_shim::protos::cgroups_v2::metrics as cg2;
use containerd_shim::protos::events::task as ev;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::{TtrpcContext, TtrpcResult};
use hyper_agent_protocol::agent;
use tokio::sync::Mutex;

use super::container::Container;
use super::events::{Event, Events, timestamp};
use super::{grouping, options, read_spec};
use crate::config::Config;
use crate::io::{self, OutStream};
use crate::process::{self, Process, State, Stdio, VM_DIED_EXIT_STATUS};
use crate::rootfs;
use crate::sandbox::{Sandbox, SandboxError};
use crate::sizing::vm_size;

/// How long an exit report waits for the last output bytes to reach the FIFOs.
const IO_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Inner {
    sandbox: Option<Arc<Sandbox>>,
    containers: HashMap<String, Container>,
}

#[derive(Clone)]
pub struct TaskService {
    shim_id: String,
    inner: Arc<Mutex<Inner>>,
    events: Arc<Events>,
    exit: Arc<ExitSignal>,
}

/// A ttrpc status containerd shows as is (containerd-shim's own error type would wrap
/// the message in its enum's debug form).
fn status(code: ttrpc::Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn not_found(what: &str) -> ttrpc::Error {
    status(ttrpc::Code::NOT_FOUND, format!("{what} not found"))
}

fn invalid(e: impl std::fmt::Display) -> ttrpc::Error {
    status(ttrpc::Code::INVALID_ARGUMENT, e.to_string())
}

fn precondition(message: String) -> ttrpc::Error {
    status(ttrpc::Code::FAILED_PRECONDITION, message)
}

fn unimplemented(message: String) -> ttrpc::Error {
    status(ttrpc::Code::UNIMPLEMENTED, message)
}

fn already_exists(what: &str) -> ttrpc::Error {
    status(
        ttrpc::Code::ALREADY_EXISTS,
        format!("{what} already exists"),
    )
}

fn agent_err(call: &str, e: ttrpc::Error) -> ttrpc::Error {
    match e {
        ttrpc::Error::RpcStatus(s) => status(s.code(), format!("agent {call}: {}", s.message())),
        other => status(ttrpc::Code::INTERNAL, format!("agent {call}: {other}")),
    }
}

fn other(e: impl std::fmt::Display) -> ttrpc::Error {
    status(ttrpc::Code::INTERNAL, e.to_string())
}

impl TaskService {
    pub fn new(
        shim_id: &str,
        namespace: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        Self {
            shim_id: shim_id.to_string(),
            inner: Arc::default(),
            events: Arc::new(Events::new(publisher, namespace)),
            exit,
        }
    }

    /// The sandbox's agent and a context for one prompt request.
    async fn agent(
        &self,
    ) -> TtrpcResult<(
        hyper_agent_protocol::agent_ttrpc::AgentServiceClient,
        ttrpc::context::Context,
    )> {
        let inner = self.inner.lock().await;
        let sandbox = inner
            .sandbox
            .as_ref()
            .ok_or_else(|| precondition("no sandbox VM is running".into()))?;
        Ok((sandbox.agent.clone(), sandbox.ctx()))
    }

    /// Boots the VM for the pod's first container, whose spec is `spec`, sized for it.
    async fn boot_sandbox(
        &self,
        config: &Config,
        container_id: &str,
        spec: &oci_spec::runtime::Spec,
        rootfs_dir: &Path,
    ) -> TtrpcResult<Arc<Sandbox>> {
        let group = grouping(container_id, spec.annotations().as_ref());
        let hostname = spec.hostname().clone().unwrap_or_default();
        let size = vm_size(&config.hypervisor, spec).map_err(invalid)?;
        tracing::info!(
            "pod {group}: VM of {} vCPUs and {} MiB",
            size.vcpus,
            size.memory_mib
        );
        let sandbox = Sandbox::boot(config, &group, &hostname, rootfs_dir, size)
            .await
            .map_err(|e| match e {
                SandboxError::Rootfs(e) => invalid(e),
                e => other(e),
            })?;
        let sandbox = Arc::new(sandbox);
        if let Some(pid) = sandbox.vmm_pid() {
            let _ = std::fs::write(sandbox.state_dir.join("vmm.pid"), pid.to_string());
            self.watch_vmm(pid).await;
        }
        self.watch_oom(sandbox.clone());
        Ok(sandbox)
    }

    /// If the VMM dies, every process of the pod exits 255 and host resources are freed.
    async fn watch_vmm(&self, pid: u32) {
        let mut sub = match monitor_subscribe(Topic::Pid).await {
            Ok(s) => s,
            Err(e) => return tracing::warn!("cannot watch the VMM: {e}"),
        };
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(event) = sub.rx.recv().await {
                if matches!(event.subject, Subject::Pid(p) if p == pid as i32) {
                    tracing::warn!("VMM (pid {pid}) exited with {}", event.exit_code);
                    this.vm_died().await;
                    break;
                }
            }
            let _ = monitor_unsubscribe(sub.id).await;
        });
    }

    async fn vm_died(&self) {
        let mut exits = Vec::new();
        {
            let mut inner = self.inner.lock().await;
            // The VM is gone: only its host-side state is left to remove.
            if let Some(sandbox) = inner.sandbox.take() {
                crate::share::remove_tree(&sandbox.state_dir);
            }
            for c in inner.containers.values_mut() {
                for p in std::iter::once(&mut c.init).chain(c.execs.values_mut()) {
                    if p.set_exited(VM_DIED_EXIT_STATUS) {
                        exits.push((c.id.clone(), p.exec_id.clone()));
                    }
                }
                if let Some(r) = c.host_rootfs.take() {
                    rootfs::unmount(&r);
                }
            }
        }
        for (cid, exec_id) in exits {
            self.publish_exit(&cid, &exec_id).await;
        }
    }

    /// Relays the agent's OOM events as TaskOOM until the VM goes away.
    fn watch_oom(&self, sandbox: Arc<Sandbox>) {
        let events = self.events.clone();
        let agent = sandbox.agent.clone();
        tokio::spawn(async move {
            loop {
                let ctx = ttrpc::context::Context::default();
                match agent
                    .get_oom_event(ctx, &agent::GetOOMEventRequest::default())
                    .await
                {
                    Ok(e) => {
                        events
                            .publish(Event::Oom(ev::TaskOOM {
                                container_id: e.container_id,
                                ..Default::default()
                            }))
                            .await
                    }
                    Err(_) => break,
                }
            }
        });
    }

    async fn publish_exit(&self, cid: &str, exec_id: &str) {
        let (exit, pid) = {
            let inner = self.inner.lock().await;
            let Some(p) = inner.containers.get(cid).and_then(|c| c.process(exec_id)) else {
                return;
            };
            (p.exit(), std::process::id())
        };
        let Some(exit) = exit else { return };
        self.events
            .publish(Event::Exit(ev::TaskExit {
                container_id: cid.to_string(),
                id: if exec_id.is_empty() {
                    cid.to_string()
                } else {
                    exec_id.to_string()
                },
                pid,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            }))
            .await;
    }

    /// Waits in the guest for a started process, then records and reports its exit.
    fn spawn_waiter(&self, cid: String, exec_id: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok((agent, _)) = this.agent().await else {
                return;
            };
            let req = agent::WaitProcessRequest {
                container_id: cid.clone(),
                exec_id: exec_id.clone(),
                ..Default::default()
            };
            let status = match agent
                .wait_process(ttrpc::context::Context::default(), &req)
                .await
            {
                Ok(r) => r.status as u32,
                Err(e) => {
                    tracing::warn!(%cid, %exec_id, "wait failed, reporting {VM_DIED_EXIT_STATUS}: {e}");
                    VM_DIED_EXIT_STATUS
                }
            };
            // Let the output reach containerd before the exit does.
            let io = {
                let mut inner = this.inner.lock().await;
                inner
                    .containers
                    .get_mut(&cid)
                    .and_then(|c| c.io.remove(&exec_id))
                    .unwrap_or_default()
            };
            for mut h in io {
                // A stream the guest never ends must not keep containerd's FIFO open:
                // dropping the copier closes it, which is containerd's end of output.
                if tokio::time::timeout(IO_DRAIN_TIMEOUT, &mut h)
                    .await
                    .is_err()
                {
                    tracing::warn!(%cid, %exec_id, "output not drained in {IO_DRAIN_TIMEOUT:?}; closing it");
                    h.abort();
                }
            }
            let recorded = {
                let mut inner = this.inner.lock().await;
                inner
                    .containers
                    .get_mut(&cid)
                    .and_then(|c| c.process_mut(&exec_id))
                    .is_some_and(|p| p.set_exited(status))
            };
            if recorded {
                this.publish_exit(&cid, &exec_id).await;
            }
        });
    }

    /// Starts copying a process's stdio between containerd's FIFOs and the guest.
    async fn start_io(&self, cid: &str, exec_id: &str, stdio: &Stdio) -> TtrpcResult<()> {
        let (agent, _) = self.agent().await?;
        let mut handles = Vec::new();
        for (path, which) in [
            (&stdio.stdout, OutStream::Stdout),
            (&stdio.stderr, OutStream::Stderr),
        ] {
            // With a terminal the guest merges stderr into stdout.
            if path.is_empty() || (stdio.terminal && which == OutStream::Stderr) {
                continue;
            }
            let h = io::copy_output(agent.clone(), cid.into(), exec_id.into(), which, path)
                .map_err(|e| other(format!("open {path}: {e}")))?;
            handles.push(h);
        }
        if !stdio.stdin.is_empty() {
            // Not awaited before exit: stdin may stay open after the process is gone.
            io::copy_input(agent, cid.into(), exec_id.into(), &stdio.stdin);
        }
        let mut inner = self.inner.lock().await;
        if let Some(c) = inner.containers.get_mut(cid) {
            c.io.insert(exec_id.to_string(), handles);
        }
        Ok(())
    }

    async fn create_container(&self, req: api::CreateTaskRequest) -> TtrpcResult<u32> {
        let bundle = PathBuf::from(&req.bundle);
        let spec = read_spec(&bundle)?;
        let spec_json = std::fs::read(bundle.join("config.json")).map_err(other)?;
        let config_path = match req.options.as_ref() {
            Some(any) => options::config_path(&any.value)
                .map_err(|e| invalid(format!("runtime options: {e}")))?,
            None => None,
        };
        let config = Config::load(config_path.as_deref().map(Path::new)).map_err(invalid)?;

        let running = {
            let inner = self.inner.lock().await;
            if inner.containers.contains_key(&req.id) {
                return Err(already_exists(&format!("container {}", req.id)));
            }
            inner.sandbox.clone()
        };

        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| PathBuf::from("rootfs"));
        let rootfs_dir = if root.is_absolute() {
            root
        } else {
            bundle.join(root)
        };
        let host_rootfs = if req.rootfs.is_empty() {
            None
        } else {
            rootfs::mount(&req.rootfs, &rootfs_dir).map_err(invalid)?;
            Some(rootfs_dir.clone())
        };
        let undo_host = |host_rootfs: &Option<PathBuf>| {
            if let Some(r) = host_rootfs {
                rootfs::unmount(r);
            }
        };
        let (sandbox, booted) = match running {
            Some(s) => (s, false),
            None => {
                match self
                    .boot_sandbox(&config, &req.id, &spec, &rootfs_dir)
                    .await
                {
                    Ok(s) => (s, true),
                    Err(e) => {
                        undo_host(&host_rootfs);
                        return Err(e);
                    }
                }
            }
        };
        // Undoes this call's work in the guest's view, on the host and (if this call
        // booted it) the VM.
        let cid = req.id.as_str();
        let undo = |sandbox: Arc<Sandbox>, host_rootfs: Option<PathBuf>| async move {
            sandbox.release_container(cid);
            if booted && let Ok(s) = Arc::try_unwrap(sandbox) {
                s.shutdown().await;
            }
            undo_host(&host_rootfs);
        };

        let create =
            match sandbox.container_request(&req.id, &rootfs_dir, spec_json, !req.stdin.is_empty())
            {
                Ok(c) => c,
                Err(e) => {
                    let status = match e {
                        SandboxError::OneContainerPerVm(_) => unimplemented(e.to_string()),
                        e => invalid(e),
                    };
                    undo(sandbox, host_rootfs).await;
                    return Err(status);
                }
            };
        let ctx = ttrpc::context::with_timeout(config.create_container_timeout().as_nanos() as i64);
        if let Err(e) = sandbox.agent.create_container(ctx, &create).await {
            undo(sandbox, host_rootfs).await;
            return Err(agent_err("CreateContainer", e));
        }

        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut inner = self.inner.lock().await;
            inner.sandbox = Some(sandbox);
            inner.containers.insert(
                req.id.clone(),
                Container {
                    id: req.id.clone(),
                    bundle: bundle.clone(),
                    host_rootfs,
                    init: Process::new("", stdio.clone()),
                    execs: HashMap::new(),
                    io: HashMap::new(),
                },
            );
        }
        self.start_io(&req.id, "", &stdio).await?;
        Ok(std::process::id())
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(unimplemented("restore from a checkpoint".into()));
        }
        let pid = self.create_container(req.clone()).await?;
        self.events
            .publish(Event::Create(ev::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(ev::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }))
            .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let (agent, ctx) = self.agent().await?;
        let (stdio, exec_spec) = {
            let inner = self.inner.lock().await;
            let c = inner
                .containers
                .get(&req.id)
                .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
            let p = c
                .process(&req.exec_id)
                .ok_or_else(|| not_found(&format!("process {} in {}", req.exec_id, req.id)))?;
            if p.state != State::Created {
                return Err(precondition(format!(
                    "process {:?} of {} is not in created state",
                    req.exec_id, req.id
                )));
            }
            (p.stdio.clone(), p.exec_spec.clone())
        };
        if req.exec_id.is_empty() {
            let r = agent::StartContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            agent
                .start_container(ctx, &r)
                .await
                .map_err(|e| agent_err("StartContainer", e))?;
        } else {
            let r = agent::ExecProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process_json: exec_spec.unwrap_or_default(),
                stdin: !stdio.stdin.is_empty(),
                ..Default::default()
            };
            agent
                .exec_process(ctx, &r)
                .await
                .map_err(|e| agent_err("ExecProcess", e))?;
            self.start_io(&req.id, &req.exec_id, &stdio).await?;
        }
        {
            let mut inner = self.inner.lock().await;
            if let Some(p) = inner
                .containers
                .get_mut(&req.id)
                .and_then(|c| c.process_mut(&req.exec_id))
            {
                p.state = State::Running;
            }
        }
        self.spawn_waiter(req.id.clone(), req.exec_id.clone());
        let pid = std::process::id();
        let event = if req.exec_id.is_empty() {
            Event::Start(ev::TaskStart {
                container_id: req.id.clone(),
                pid,
                ..Default::default()
            })
        } else {
            Event::ExecStarted(ev::TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            })
        };
        self.events.publish(event).await;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let inner = self.inner.lock().await;
        let c = inner
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
        let p = c
            .process(&req.exec_id)
            .ok_or_else(|| not_found(&format!("process {} in {}", req.exec_id, req.id)))?;
        let mut resp = api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: std::process::id(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            ..Default::default()
        };
        resp.status = p.status().into();
        if let Some(exit) = p.exit() {
            resp.exit_status = exit.status;
            resp.exited_at = MessageField::some(timestamp(exit.at));
        }
        Ok(resp)
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let rx = {
            let inner = self.inner.lock().await;
            inner
                .containers
                .get(&req.id)
                .and_then(|c| c.process(&req.exec_id))
                .map(Process::exit_watch)
                .ok_or_else(|| not_found(&format!("process {:?} in {}", req.exec_id, req.id)))?
        };
        let exit = process::wait_exit(rx).await;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        {
            let inner = self.inner.lock().await;
            let p = inner
                .containers
                .get(&req.id)
                .and_then(|c| c.process(&req.exec_id))
                .ok_or_else(|| not_found(&format!("process {:?} in {}", req.exec_id, req.id)))?;
            if p.exit().is_some() {
                return Err(not_found("process already finished"));
            }
        }
        let (agent, ctx) = self.agent().await?;
        let r = agent::SignalProcessRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            signal: req.signal,
            all: req.all,
            ..Default::default()
        };
        agent
            .signal_process(ctx, &r)
            .await
            .map_err(|e| agent_err("SignalProcess", e))?;
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        {
            let mut inner = self.inner.lock().await;
            let c = inner
                .containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
            if c.execs.contains_key(&req.exec_id) || req.exec_id.is_empty() {
                return Err(already_exists(&format!("exec id {:?}", req.exec_id)));
            }
            let mut p = Process::new(
                &req.exec_id,
                Stdio {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
            );
            p.exec_spec = Some(
                req.spec
                    .as_ref()
                    .map(|a| a.value.clone())
                    .unwrap_or_default(),
            );
            c.execs.insert(req.exec_id.clone(), p);
        }
        self.events
            .publish(Event::ExecAdded(ev::TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }))
            .await;
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let pid = std::process::id();
        if !req.exec_id.is_empty() {
            let mut inner = self.inner.lock().await;
            let c = inner
                .containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
            let p = c
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| not_found(&format!("exec {}", req.exec_id)))?;
            for h in c.io.remove(&req.exec_id).into_iter().flatten() {
                h.abort();
            }
            let exit = p.exit();
            let sandbox = inner.sandbox.clone();
            drop(inner);
            if let Some(s) = sandbox {
                // Frees the exec's id and streams in the guest.
                let r = agent::RemoveProcessRequest {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                };
                if let Err(e) = s.agent.remove_process(s.ctx(), &r).await {
                    tracing::warn!("RemoveProcess {}/{}: {e}", req.id, req.exec_id);
                }
            }
            return Ok(api::DeleteResponse {
                pid,
                exit_status: exit.map_or(0, |e| e.status),
                exited_at: MessageField::from_option(exit.map(|e| timestamp(e.at))),
                ..Default::default()
            });
        }

        let (container, sandbox, last) = {
            let mut inner = self.inner.lock().await;
            let c = inner
                .containers
                .get(&req.id)
                .ok_or_else(|| not_found(&format!("container {}", req.id)))?;
            if matches!(c.init.state, State::Running | State::Paused) {
                return Err(precondition(format!(
                    "container {} is still running",
                    req.id
                )));
            }
            let c = inner.containers.remove(&req.id).expect("checked above");
            let last = inner.containers.is_empty();
            let sandbox = inner.sandbox.clone();
            (c, sandbox, last)
        };
        if let Some(sandbox) = &sandbox {
            let r = agent::RemoveContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            if let Err(e) = sandbox.agent.remove_container(sandbox.ctx(), &r).await {
                tracing::warn!("RemoveContainer {}: {e}", req.id);
            }
            sandbox.release_container(&req.id);
        }
        drop(sandbox);
        let sandbox_left = if last {
            self.inner.lock().await.sandbox.take()
        } else {
            None
        };
        if let Some(sandbox) = sandbox_left {
            match Arc::try_unwrap(sandbox) {
                Ok(s) => s.shutdown().await,
                Err(_) => tracing::warn!("sandbox still in use; VM left to Shutdown"),
            }
        }
        for h in container.io.into_values().flatten() {
            h.abort();
        }
        if let Some(r) = &container.host_rootfs {
            rootfs::unmount(r);
        }
        let exit = container.init.exit();
        let resp = api::DeleteResponse {
            pid,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: MessageField::from_option(exit.map(|e| timestamp(e.at))),
            ..Default::default()
        };
        self.events
            .publish(Event::Delete(ev::TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status: resp.exit_status,
                exited_at: resp.exited_at.clone(),
                ..Default::default()
            }))
            .await;
        Ok(resp)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let (agent, ctx) = self.agent().await?;
        let r = agent::ListProcessesRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        let list = agent
            .list_processes(ctx, &r)
            .await
            .map_err(|e| agent_err("ListProcesses", e))?;
        Ok(api::PidsResponse {
            processes: list
                .processes
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: p.pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let (agent, ctx) = self.agent().await?;
        let r = agent::PauseContainerRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        agent
            .pause_container(ctx, &r)
            .await
            .map_err(|e| agent_err("PauseContainer", e))?;
        self.set_init_state(&req.id, State::Paused).await;
        self.events
            .publish(Event::Paused(ev::TaskPaused {
                container_id: req.id,
                ..Default::default()
            }))
            .await;
        Ok(api::Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        let (agent, ctx) = self.agent().await?;
        let r = agent::ResumeContainerRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        agent
            .resume_container(ctx, &r)
            .await
            .map_err(|e| agent_err("ResumeContainer", e))?;
        self.set_init_state(&req.id, State::Running).await;
        self.events
            .publish(Event::Resumed(ev::TaskResumed {
                container_id: req.id,
                ..Default::default()
            }))
            .await;
        Ok(api::Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unimplemented(
            "checkpoint is not supported by hyper (a VM-level snapshot is planned)".into(),
        ))
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        if req.stdin {
            let (agent, ctx) = self.agent().await?;
            let r = agent::CloseStdinRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            };
            agent
                .close_stdin(ctx, &r)
                .await
                .map_err(|e| agent_err("CloseStdin", e))?;
        }
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let (agent, ctx) = self.agent().await?;
        let r = agent::TtyWinResizeRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            row: req.height,
            column: req.width,
            ..Default::default()
        };
        agent
            .tty_win_resize(ctx, &r)
            .await
            .map_err(|e| agent_err("TtyWinResize", e))?;
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let (agent, ctx) = self.agent().await?;
        // containerd marshals specs.LinuxResources as JSON inside the Any.
        let resources_json = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let r = agent::UpdateContainerRequest {
            container_id: req.id.clone(),
            resources_json,
            ..Default::default()
        };
        agent
            .update_container(ctx, &r)
            .await
            .map_err(|e| agent_err("UpdateContainer", e))?;
        Ok(api::Empty::new())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let (agent, ctx) = self.agent().await?;
        let r = agent::StatsContainerRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        let s = agent
            .stats_container(ctx, &r)
            .await
            .map_err(|e| agent_err("StatsContainer", e))?;
        let metrics = to_cgroup_v2_metrics(&s);
        let any = Any {
            type_url: "io.containerd.cgroups.v2.Metrics".into(),
            value: metrics.write_to_bytes().map_err(other)?,
            ..Default::default()
        };
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        let sandbox = {
            let mut inner = self.inner.lock().await;
            if !inner.containers.is_empty() {
                return Ok(api::Empty::new());
            }
            inner.sandbox.take()
        };
        if let Some(s) = sandbox.and_then(|s| Arc::try_unwrap(s).ok()) {
            s.shutdown().await;
        }
        tracing::info!("shim {} shutting down", self.shim_id);
        self.exit.signal();
        Ok(api::Empty::new())
    }
}

impl TaskService {
    async fn set_init_state(&self, cid: &str, state: State) {
        let mut inner = self.inner.lock().await;
        if let Some(c) = inner.containers.get_mut(cid)
            && c.init.exit().is_none()
        {
            c.init.state = state;
        }
    }
}

/// The agent's cgroup v2 numbers in containerd's `io.containerd.cgroups.v2.Metrics`.
pub fn to_cgroup_v2_metrics(s: &agent::StatsContainerResponse) -> cg2::Metrics {
    let mut m = cg2::Metrics::new();
    if let Some(cpu) = s.cpu.as_ref() {
        m.cpu = MessageField::some(cg2::CPUStat {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(mem) = s.memory.as_ref() {
        let stat = |k: &str| mem.stat.get(k).copied().unwrap_or(0);
        m.memory = MessageField::some(cg2::MemoryStat {
            usage: mem.usage,
            usage_limit: mem.usage_limit,
            max_usage: mem.max_usage,
            swap_usage: mem.swap_usage,
            swap_limit: mem.swap_limit,
            anon: stat("anon"),
            file: stat("file"),
            kernel_stack: stat("kernel_stack"),
            slab: stat("slab"),
            sock: stat("sock"),
            shmem: stat("shmem"),
            file_mapped: stat("file_mapped"),
            file_dirty: stat("file_dirty"),
            file_writeback: stat("file_writeback"),
            pgfault: stat("pgfault"),
            pgmajfault: stat("pgmajfault"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            ..Default::default()
        });
        m.memory_events = MessageField::some(cg2::MemoryEvents {
            oom: mem.oom_events,
            oom_kill: mem.oom_kill,
            ..Default::default()
        });
    }
    if let Some(p) = s.pids.as_ref() {
        m.pids = MessageField::some(cg2::PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    if !s.io.is_empty() {
        m.io = MessageField::some(cg2::IOStat {
            usage: s
                .io
                .iter()
                .map(|e| cg2::IOEntry {
                    major: e.major,
                    minor: e.minor,
                    rbytes: e.rbytes,
                    wbytes: e.wbytes,
                    rios: e.rios,
                    wios: e.wios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
    }
    m.hugetlb = s
        .hugetlb
        .iter()
        .map(|h| cg2::HugeTlbStat {
            pagesize: h.pagesize.clone(),
            current: h.current,
            max: h.max,
            ..Default::default()
        })
        .collect();
    m.network = s
        .network
        .iter()
        .map(|n| cg2::NetworkStat {
            name: n.name.clone(),
            rx_bytes: n.rx_bytes,
            rx_packets: n.rx_packets,
            rx_errors: n.rx_errors,
            rx_dropped: n.rx_dropped,
            tx_bytes: n.tx_bytes,
            tx_packets: n.tx_packets,
            tx_errors: n.tx_errors,
            tx_dropped: n.tx_dropped,
            ..Default::default()
        })
        .collect();
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_map_onto_containerd_metrics() {
        let mut mem = agent::MemoryStats {
            usage: 10,
            usage_limit: 20,
            oom_kill: 1,
            ..Default::default()
        };
        mem.stat.insert("anon".into(), 7);
        let s = agent::StatsContainerResponse {
            cpu: MessageField::some(agent::CpuStats {
                usage_usec: 5,
                ..Default::default()
            }),
            memory: MessageField::some(mem),
            pids: MessageField::some(agent::PidsStats {
                current: 2,
                limit: 9,
                ..Default::default()
            }),
            io: vec![agent::IoEntry {
                major: 254,
                rbytes: 4096,
                ..Default::default()
            }],
            ..Default::default()
        };
        let m = to_cgroup_v2_metrics(&s);
        assert_eq!(m.cpu.usage_usec, 5);
        assert_eq!(
            (m.memory.usage, m.memory.usage_limit, m.memory.anon),
            (10, 20, 7)
        );
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!((m.pids.current, m.pids.limit), (2, 9));
        assert_eq!((m.io.usage[0].major, m.io.usage[0].rbytes), (254, 4096));
        // And it survives the wire as containerd decodes it.
        let back = cg2::Metrics::parse_from_bytes(&m.write_to_bytes().unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
