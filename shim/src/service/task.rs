//! containerd's task API (v2) mapped onto the pod, call by call, and back: requests to
//! pod calls, pod errors to ttrpc statuses, results to responses and task events.
//! The rules (undo, teardown, exits) live in `pod`, not here.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::api::{self, ProcessInfo, Status};
use containerd_shim::protos::events::task as ev;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::{TtrpcContext, TtrpcResult};
use tokio::sync::OnceCell;

use super::events::{Event, Events, TaskEvents, timestamp};
use super::options;
use super::stats::to_cgroup_v2_metrics;
use super::status::status;
use crate::agent::ProcessRef;
use crate::config::{self, Config};
use crate::identifier;
use crate::pod::{Exit, NewContainer, Pod, State, Stdio};
use crate::sandbox::HyperVmmBackend;
use crate::startup_trace::{SPAWNED_ENV, StartupTrace, Step};

#[derive(Clone)]
pub struct TaskService {
    shim_id: String,
    /// Made by the first Create, with the config that Create names: one per shim.
    pod: Arc<OnceCell<Arc<Pod>>>,
    events: Arc<Events>,
    exit: Arc<ExitSignal>,
    /// The pod's start-up, from containerd's `start` of this shim on.
    trace: Arc<StartupTrace>,
}

fn process(id: &str, exec_id: &str) -> ProcessRef {
    ProcessRef::new(id, exec_id)
}

fn to_status(s: State) -> Status {
    match s {
        State::Created => Status::CREATED,
        State::Running => Status::RUNNING,
        State::Paused => Status::PAUSED,
        State::Stopped => Status::STOPPED,
    }
}

fn delete_response(exit: Option<Exit>) -> api::DeleteResponse {
    api::DeleteResponse {
        pid: std::process::id(),
        exit_status: exit.map_or(0, |e| e.status),
        exited_at: MessageField::from_option(exit.map(|e| timestamp(e.at))),
        ..Default::default()
    }
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
            pod: Arc::default(),
            events: Arc::new(Events::new(publisher, namespace)),
            exit,
            trace: Arc::new(StartupTrace::for_shim(
                std::env::var(SPAWNED_ENV).ok().as_deref(),
            )),
        }
    }

    /// The pod; before any Create there is none, so no container is found.
    fn pod(&self, container_id: &str) -> TtrpcResult<&Arc<Pod>> {
        self.pod.get().ok_or_else(|| {
            status(
                ttrpc::Code::NOT_FOUND,
                format!("container {container_id} not found"),
            )
        })
    }

    /// The pod, made on the first Create from the config its runtime options name.
    async fn pod_for_create(&self, req: &api::CreateTaskRequest) -> TtrpcResult<&Arc<Pod>> {
        let invalid = |m: String| status(ttrpc::Code::INVALID_ARGUMENT, m);
        let config_path = match req.options.as_ref() {
            Some(any) => options::config_path(&any.value)
                .map_err(|e| invalid(format!("runtime options: {e}")))?,
            None => None,
        };
        let pod = self
            .pod
            .get_or_try_init(|| async {
                let config = Config::load(config_path.as_deref().map(Path::new))
                    .map_err(|e| invalid(e.to_string()))?;
                self.trace.mark(Step::ConfigLoaded);
                let backend = Arc::new(HyperVmmBackend::new(&config));
                let events = Arc::new(TaskEvents(self.events.clone()));
                Ok::<_, ttrpc::Error>(Pod::new(config, backend, events, self.trace.clone()))
            })
            .await?;
        Ok(pod)
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
            return Err(status(
                ttrpc::Code::UNIMPLEMENTED,
                "restore from a checkpoint",
            ));
        }
        // Before the id names anything; the pod checks the pod id from the bundle's spec.
        identifier::check("container id", &req.id, "the create request")
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e.to_string()))?;
        self.trace.mark(Step::CreateReceived);
        let pod = self.pod_for_create(&req).await?;
        let bundle = PathBuf::from(&req.bundle);
        // What `delete` needs after a crash of this shim (the state dir above all).
        config::record(pod.config(), &bundle).map_err(|e| status(ttrpc::Code::INTERNAL, e))?;
        pod.create(NewContainer {
            id: req.id.clone(),
            bundle,
            rootfs_mounts: req.rootfs.clone(),
            stdio: Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        })
        .await?;
        let pid = std::process::id();
        self.events
            .publish(Event::Create(ev::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(ev::TaskIO {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
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
        self.pod(&req.id)?
            .start(&process(&req.id, &req.exec_id))
            .await?;
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
        let s = self
            .pod(&req.id)?
            .state(&process(&req.id, &req.exec_id))
            .await?;
        let mut resp = api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: s.bundle.display().to_string(),
            pid: std::process::id(),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            terminal: s.stdio.terminal,
            ..Default::default()
        };
        resp.status = to_status(s.state).into();
        if let Some(exit) = s.exit {
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
        let exit = self
            .pod(&req.id)?
            .wait(&process(&req.id, &req.exec_id))
            .await?;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.pod(&req.id)?
            .kill(&process(&req.id, &req.exec_id), req.signal, req.all)
            .await?;
        Ok(api::Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        self.pod(&req.id)?
            .add_exec(&process(&req.id, &req.exec_id), stdio, spec)
            .await?;
        self.events
            .publish(Event::ExecAdded(ev::TaskExecAdded {
                container_id: req.id,
                exec_id: req.exec_id,
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
        let exit = self
            .pod(&req.id)?
            .delete(&process(&req.id, &req.exec_id))
            .await?;
        let resp = delete_response(exit);
        if req.exec_id.is_empty() {
            self.events
                .publish(Event::Delete(ev::TaskDelete {
                    container_id: req.id.clone(),
                    id: req.id.clone(),
                    pid: resp.pid,
                    exit_status: resp.exit_status,
                    exited_at: resp.exited_at.clone(),
                    ..Default::default()
                }))
                .await;
        }
        Ok(resp)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let pids = self.pod(&req.id)?.pids(&req.id).await?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.pod(&req.id)?.pause(&req.id).await?;
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
        self.pod(&req.id)?.resume(&req.id).await?;
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
        Err(status(
            ttrpc::Code::UNIMPLEMENTED,
            "checkpoint is not supported by hyper (a VM-level snapshot is planned)",
        ))
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        if req.stdin {
            self.pod(&req.id)?
                .close_stdin(&process(&req.id, &req.exec_id))
                .await?;
        }
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        self.pod(&req.id)?
            .resize_tty(&process(&req.id, &req.exec_id), req.height, req.width)
            .await?;
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        // containerd marshals specs.LinuxResources as JSON inside the Any.
        let resources_json = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        self.pod(&req.id)?.update(&req.id, resources_json).await?;
        Ok(api::Empty::new())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let s = self.pod(&req.id)?.stats(&req.id).await?;
        let value = to_cgroup_v2_metrics(&s)
            .write_to_bytes()
            .map_err(|e| status(ttrpc::Code::INTERNAL, e.to_string()))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(Any {
                type_url: "io.containerd.cgroups.v2.Metrics".into(),
                value,
                ..Default::default()
            }),
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
        if let Some(pod) = self.pod.get()
            && !pod.shutdown().await
        {
            return Ok(api::Empty::new());
        }
        tracing::info!(shim = %self.shim_id, "shutting down");
        self.exit.signal();
        Ok(api::Empty::new())
    }
}
