//! Task events for containerd (`TTRPC_ADDRESS`): one place that knows topics and envelopes.
use std::time::{SystemTime, UNIX_EPOCH};

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics;

pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// Which event, with the topic it goes to.
pub enum Event {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Paused(TaskPaused),
    Resumed(TaskResumed),
    Oom(TaskOOM),
}

impl Event {
    fn into_parts(self) -> (&'static str, Box<dyn MessageDyn>) {
        match self {
            Event::Create(e) => (topics::TASK_CREATE_EVENT_TOPIC, Box::new(e)),
            Event::Start(e) => (topics::TASK_START_EVENT_TOPIC, Box::new(e)),
            Event::Exit(e) => (topics::TASK_EXIT_EVENT_TOPIC, Box::new(e)),
            Event::Delete(e) => (topics::TASK_DELETE_EVENT_TOPIC, Box::new(e)),
            Event::ExecAdded(e) => (topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e)),
            Event::ExecStarted(e) => (topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e)),
            Event::Paused(e) => (topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e)),
            Event::Resumed(e) => (topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e)),
            Event::Oom(e) => (topics::TASK_OOM_EVENT_TOPIC, Box::new(e)),
        }
    }
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Self {
            publisher,
            namespace: namespace.to_string(),
        }
    }

    /// Queues the event; a publishing failure is logged, never fails the task call.
    pub async fn publish(&self, event: Event) {
        let (topic, message) = event.into_parts();
        let ctx = containerd_shim::Context::default();
        if let Err(e) = self
            .publisher
            .publish(ctx, topic, &self.namespace, message)
            .await
        {
            tracing::warn!("publish {topic}: {e}");
        }
    }
}

/// The pod's own events (exits, OOM kills) as containerd task events.
pub struct TaskEvents(pub std::sync::Arc<Events>);

#[async_trait::async_trait]
impl crate::pod::PodEvents for TaskEvents {
    async fn exited(&self, p: &crate::agent::ProcessRef, exit: crate::pod::Exit) {
        let id = if p.exec_id.is_empty() {
            &p.container_id
        } else {
            &p.exec_id
        };
        self.0
            .publish(Event::Exit(TaskExit {
                container_id: p.container_id.clone(),
                id: id.clone(),
                pid: std::process::id(),
                exit_status: exit.status,
                exited_at: containerd_shim::protos::protobuf::MessageField::some(timestamp(
                    exit.at,
                )),
                ..Default::default()
            }))
            .await;
    }

    async fn oom(&self, container_id: &str) {
        self.0
            .publish(Event::Oom(TaskOOM {
                container_id: container_id.to_string(),
                ..Default::default()
            }))
            .await;
    }
}
