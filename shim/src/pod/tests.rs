//! The pod's rules on the bare machine: a fake agent, and a fake hypervisor whose "VMM"
//! is a real process (`sleep`), so VM death is a real process dying. Shares, binds and
//! FIFOs are real (these tests run as root, as CI does).
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use hyper_agent_protocol::agent::{
    CreateContainerRequest, CreateSandboxRequest, GuestMetricsResponse, StatsContainerResponse,
};
use tokio::sync::watch;

use super::*;
use crate::agent::{Agent, AgentError, OutStream, ProcessRef};
use crate::config::{Config, SharedFs};
use crate::hypervisor::{
    BootTimes, Hypervisor, HypervisorError, SnapshotFiles, SnapshotUse, Stop, VmSpec, VmmMetrics,
};
use crate::sandbox::SandboxBackend;

/// What the fakes saw, in order: "vmm start", "CreateContainer c1", …
type Log = Arc<StdMutex<Vec<String>>>;

fn push(log: &Log, entry: impl Into<String>) {
    log.lock().unwrap().push(entry.into());
}

#[derive(Default)]
struct FakeAgent {
    log: Log,
    /// Calls that fail with INTERNAL.
    fail: StdMutex<HashSet<&'static str>>,
    exits: StdMutex<HashMap<ProcessRef, watch::Sender<Option<u32>>>>,
    /// Output handed out by `read_stream`, in chunks.
    stdout: StdMutex<HashMap<ProcessRef, Vec<Vec<u8>>>>,
    stdin: StdMutex<Vec<u8>>,
    /// Most bytes one `write_stdin` takes (0: all), like a pipe with little room.
    max_write: usize,
}

impl FakeAgent {
    fn call(&self, name: &'static str, what: &str) -> Result<(), AgentError> {
        push(&self.log, format!("{name} {what}").trim_end().to_string());
        if self.fail.lock().unwrap().contains(name) {
            return Err(AgentError::new(name, ttrpc::Code::INTERNAL, "injected"));
        }
        Ok(())
    }

    fn exit_tx(&self, p: &ProcessRef) -> watch::Sender<Option<u32>> {
        self.exits
            .lock()
            .unwrap()
            .entry(p.clone())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// The process exits in the guest with `status`.
    fn exit(&self, p: &ProcessRef, status: u32) {
        self.exit_tx(p).send_replace(Some(status));
    }

    fn exited(&self, p: &ProcessRef) -> bool {
        self.exit_tx(p).borrow().is_some()
    }
}

#[async_trait]
impl Agent for FakeAgent {
    async fn health(&self) -> Result<(), AgentError> {
        Ok(())
    }
    async fn create_sandbox(&self, r: CreateSandboxRequest) -> Result<(), AgentError> {
        self.call("CreateSandbox", &r.sandbox_id)
    }
    async fn destroy_sandbox(&self, id: &str) -> Result<(), AgentError> {
        self.call("DestroySandbox", id)
    }
    async fn reseed_random(&self, seed: Vec<u8>) -> Result<(), AgentError> {
        self.call("ReseedRandomDev", &seed.len().to_string())
    }
    async fn set_guest_time(&self, _: std::time::SystemTime) -> Result<(), AgentError> {
        self.call("SetGuestDateTime", "")
    }
    async fn create_container(&self, r: CreateContainerRequest) -> Result<(), AgentError> {
        self.call("CreateContainer", &r.container_id)
    }
    async fn start_container(&self, id: &str) -> Result<(), AgentError> {
        self.call("StartContainer", id)
    }
    async fn remove_container(&self, id: &str) -> Result<(), AgentError> {
        self.call("RemoveContainer", id)
    }
    async fn pause_container(&self, id: &str) -> Result<(), AgentError> {
        self.call("PauseContainer", id)
    }
    async fn resume_container(&self, id: &str) -> Result<(), AgentError> {
        self.call("ResumeContainer", id)
    }
    async fn update_container(&self, id: &str, _: Vec<u8>) -> Result<(), AgentError> {
        self.call("UpdateContainer", id)
    }
    async fn stats_container(&self, id: &str) -> Result<StatsContainerResponse, AgentError> {
        self.call("StatsContainer", id)?;
        Ok(StatsContainerResponse {
            pids: Some(hyper_agent_protocol::agent::PidsStats {
                current: 1,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }
    async fn guest_metrics(&self) -> Result<GuestMetricsResponse, AgentError> {
        self.call("GuestMetrics", "")?;
        Ok(GuestMetricsResponse::default())
    }
    async fn list_processes(&self, id: &str) -> Result<Vec<u32>, AgentError> {
        self.call("ListProcesses", id)?;
        Ok(vec![1])
    }
    async fn exec_process(&self, p: &ProcessRef, _: Vec<u8>, _: bool) -> Result<(), AgentError> {
        self.call("ExecProcess", &format!("{}/{}", p.container_id, p.exec_id))
    }
    async fn remove_process(&self, p: &ProcessRef) -> Result<(), AgentError> {
        self.call(
            "RemoveProcess",
            &format!("{}/{}", p.container_id, p.exec_id),
        )
    }
    async fn signal_process(&self, p: &ProcessRef, signal: u32, _: bool) -> Result<(), AgentError> {
        self.call(
            "SignalProcess",
            &format!("{}/{} {signal}", p.container_id, p.exec_id),
        )?;
        if signal == 9 || signal == 15 {
            self.exit(p, 128 + signal);
        }
        Ok(())
    }
    async fn wait_process(&self, p: &ProcessRef) -> Result<u32, AgentError> {
        let mut rx = self.exit_tx(p).subscribe();
        let status = *rx.wait_for(Option::is_some).await.expect("sender kept");
        Ok(status.expect("waited for Some"))
    }
    async fn resize_tty(&self, _: &ProcessRef, _: u32, _: u32) -> Result<(), AgentError> {
        Ok(())
    }
    async fn write_stdin(&self, p: &ProcessRef, data: &[u8]) -> Result<usize, AgentError> {
        if self.exited(p) {
            return Err(AgentError::new(
                "WriteStdin",
                ttrpc::Code::NOT_FOUND,
                "exited",
            ));
        }
        let n = match self.max_write {
            0 => data.len(),
            m => data.len().min(m),
        };
        self.stdin.lock().unwrap().extend_from_slice(&data[..n]);
        Ok(n)
    }
    async fn close_stdin(&self, p: &ProcessRef) -> Result<(), AgentError> {
        let got = self.stdin.lock().unwrap().len();
        self.call(
            "CloseStdin",
            &format!("{}/{} after {got} bytes", p.container_id, p.exec_id),
        )
    }
    async fn read_stream(
        &self,
        p: &ProcessRef,
        which: OutStream,
        _max: u32,
    ) -> Result<Vec<u8>, AgentError> {
        loop {
            if which == OutStream::Stdout
                && let Some(chunks) = self.stdout.lock().unwrap().get_mut(p)
                && !chunks.is_empty()
            {
                return Ok(chunks.remove(0));
            }
            if self.exited(p) {
                return Ok(Vec::new());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    async fn oom_event(&self) -> Result<String, AgentError> {
        std::future::pending().await
    }
}

/// A "VMM" that is a `sleep` process. Its snapshot is [`FAKE_SNAPSHOT`] in the state
/// file; it restores only from that.
struct FakeHypervisor {
    dir: PathBuf,
    child: Option<std::process::Child>,
    log: Log,
    save_to: Option<SnapshotFiles>,
}

const FAKE_SNAPSHOT: &str = "a fake VM";

#[async_trait]
impl Hypervisor for FakeHypervisor {
    async fn start(&mut self, spec: &VmSpec) -> Result<(), HypervisorError> {
        match &spec.snapshot {
            Some(SnapshotUse::RestoreFrom(f)) => {
                let state = std::fs::read_to_string(&f.state).unwrap_or_default();
                if state != FAKE_SNAPSHOT {
                    push(&self.log, "vmm restore refused");
                    return Err(HypervisorError::DiedDuringBoot {
                        status: "exit status: 1".into(),
                        console: format!("{}: not a snapshot", f.state.display()),
                    });
                }
                push(&self.log, "vmm restore");
            }
            Some(SnapshotUse::SaveTo(f)) => self.save_to = Some(f.clone()),
            None => {}
        }
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        push(&self.log, "vmm start");
        Ok(())
    }
    async fn stop(&mut self, how: Stop) -> Result<(), HypervisorError> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            push(&self.log, "vmm stop");
            push(&self.log, format!("vmm stop: {how:?}"));
        }
        Ok(())
    }
    async fn pause(&self) -> Result<(), HypervisorError> {
        Ok(())
    }
    async fn resume(&self) -> Result<(), HypervisorError> {
        Ok(())
    }
    async fn snapshot(&self) -> Result<(), HypervisorError> {
        let f = self
            .save_to
            .as_ref()
            .expect("snapshot of a VM started with save_to");
        std::fs::write(&f.state, FAKE_SNAPSHOT)?;
        std::fs::write(&f.memory, "")?;
        push(&self.log, "vmm snapshot");
        Ok(())
    }
    fn vsock_uds(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    async fn metrics(&self, _: Duration) -> Result<VmmMetrics, HypervisorError> {
        Ok(VmmMetrics {
            vcpus_started_us: FAKE_BOOT_TIMES.vcpus_started_us,
            boot_time_us: FAKE_BOOT_TIMES.guest_init_us,
            ..VmmMetrics::default()
        })
    }
}

/// What the fake VMM says of its boot: later than its agent answers (placed no later).
const FAKE_BOOT_TIMES: BootTimes = BootTimes {
    vcpus_started_us: 1_000,
    guest_init_us: 2_000,
    restored_us: 0,
};

impl Drop for FakeHypervisor {
    /// A pod a test leaves running must not leave its "VMM" behind.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct FakeBackend {
    agent: Arc<FakeAgent>,
    log: Log,
}

#[async_trait]
impl SandboxBackend for FakeBackend {
    fn hypervisor(&self, _config: &Config, state_dir: &Path) -> Box<dyn Hypervisor> {
        Box::new(FakeHypervisor {
            dir: state_dir.to_path_buf(),
            child: None,
            log: self.log.clone(),
            save_to: None,
        })
    }
    async fn connect_agent(&self, _: &Path, _: Duration) -> Result<Arc<dyn Agent>, String> {
        Ok(self.agent.clone())
    }
}

#[derive(Default)]
struct Recorder {
    exits: StdMutex<Vec<(ProcessRef, u32)>>,
}

#[async_trait]
impl PodEvents for Recorder {
    async fn exited(&self, p: &ProcessRef, exit: Exit) {
        self.exits.lock().unwrap().push((p.clone(), exit.status));
    }
    async fn oom(&self, _: &str) {}
}

struct Rig {
    dir: tempfile::TempDir,
    config: Config,
    backend: Arc<FakeBackend>,
    pod: Arc<Pod>,
    agent: Arc<FakeAgent>,
    log: Log,
    events: Arc<Recorder>,
    trace: Arc<StartupTrace>,
}

fn rig_with(shared_fs: SharedFs, agent: FakeAgent) -> Rig {
    rig_configured(agent, |config, _| config.hypervisor.shared_fs = shared_fs)
}

/// A rig whose config `configure` changes (given the rig's temporary dir).
fn rig_configured(agent: FakeAgent, configure: impl FnOnce(&mut Config, &Path)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.runtime.state_dir = dir.path().join("state");
    configure(&mut config, dir.path());
    let log = agent.log.clone();
    let agent = Arc::new(agent);
    let backend = Arc::new(FakeBackend {
        agent: agent.clone(),
        log: log.clone(),
    });
    let events = Arc::new(Recorder::default());
    let trace = Arc::new(StartupTrace::new());
    let pod = Pod::new(
        config.clone(),
        backend.clone(),
        events.clone(),
        trace.clone(),
    );
    Rig {
        dir,
        config,
        backend,
        pod,
        agent,
        log,
        events,
        trace,
    }
}

fn rig() -> Rig {
    rig_with(SharedFs::VirtioFs, FakeAgent::default())
}

fn init(id: &str) -> ProcessRef {
    ProcessRef::new(id, "")
}

impl Rig {
    /// A bundle with a spec and a rootfs holding one file.
    fn bundle(&self, id: &str) -> PathBuf {
        let bundle = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(bundle.join("rootfs/hello"), "hi").unwrap();
        let spec = oci_spec::runtime::Spec::default();
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        bundle
    }

    async fn create_with(&self, id: &str, stdio: Stdio) -> PodResult<()> {
        self.create_in(&self.pod, id, stdio).await
    }

    /// Creates container `id` in `pod` (this rig's, or [`Rig::another_pod`]).
    async fn create_in(&self, pod: &Pod, id: &str, stdio: Stdio) -> PodResult<()> {
        pod.create(NewContainer {
            id: id.into(),
            bundle: self.bundle(id),
            rootfs_mounts: Vec::new(),
            stdio,
        })
        .await
    }

    /// A stdout FIFO with containerd's (non-blocking) read end open, as before Create.
    fn stdout_fifo(&self) -> (PathBuf, std::fs::File) {
        let path = self.dir.path().join("stdout");
        mkfifo(&path);
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        (path, reader)
    }

    async fn create(&self, id: &str) -> PodResult<()> {
        self.create_with(id, Stdio::default()).await
    }

    fn state_root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Mounts below the state dir (which is a private mount of its own).
    fn mounts_left(&self) -> Vec<PathBuf> {
        let root = self.state_root();
        let mut m = crate::share::mounts_under(&root);
        m.retain(|p| *p != root);
        m
    }

    /// Pod state dirs that still exist.
    fn pod_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.state_root())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn logged(&self, entry: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| *e == entry)
            .count()
    }

    async fn exits(&self, n: usize) -> Vec<(ProcessRef, u32)> {
        for _ in 0..500 {
            let exits = self.events.exits.lock().unwrap().clone();
            if exits.len() >= n {
                return exits;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "fewer than {n} exits: {:?}",
            self.events.exits.lock().unwrap()
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Whatever a failing test left mounted must not outlive it.
        crate::share::remove_tree(&self.state_root());
    }
}

#[tokio::test]
async fn a_bad_id_is_refused_before_anything_happens() {
    // Were a check missing, these ids still point inside the test's temp dir.
    let cases = [
        PodIdCase {
            name: "container id",
            container: "../c1",
            annotations: &[],
            want: Err("container id \"../c1\" from the create request is not"),
        },
        PodIdCase {
            name: "CRI sandbox id",
            container: "c1",
            annotations: &[(CRI, "../escaped")],
            want: Err("pod id \"../escaped\" from annotation io.kubernetes.cri.sandbox-id is not"),
        },
        PodIdCase {
            name: "runc group",
            container: "c1",
            annotations: &[(GROUP, "a/b")],
            want: Err("pod id \"a/b\" from annotation io.containerd.runc.v2.group is not"),
        },
    ];
    let mut failures = Vec::new();
    for PodIdCase {
        name,
        container: id,
        annotations,
        want,
    } in cases
    {
        let want = want.unwrap_err();
        let r = rig();
        let bundle = r.bundle("ok");
        let mut spec = oci_spec::runtime::Spec::default();
        spec.set_annotations(annotation_map(annotations));
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        let got = r
            .pod
            .create(NewContainer {
                id: id.into(),
                bundle,
                rootfs_mounts: Vec::new(),
                stdio: Stdio::default(),
            })
            .await;
        match got {
            Err(PodError::InvalidArgument(m)) if m.starts_with(want) => {}
            other => failures.push(format!("{name}: got {other:?}, want {want:?}")),
        }
        if !r.log.lock().unwrap().is_empty() {
            failures.push(format!(
                "{name}: something ran: {:?}",
                r.log.lock().unwrap()
            ));
        }
        if !r.pod_dirs().is_empty() {
            failures.push(format!("{name}: state made: {:?}", r.pod_dirs()));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn a_failed_first_create_undoes_everything() {
    let mut failures = Vec::new();
    for failing in ["CreateSandbox", "CreateContainer"] {
        let agent = FakeAgent::default();
        agent.fail.lock().unwrap().insert(failing);
        let r = rig_with(SharedFs::VirtioFs, agent);
        let err = r.create("c1").await.err();
        let mut check = |ok: bool, what: String| {
            if !ok {
                failures.push(format!("{failing} fails: {what}"));
            }
        };
        check(
            err.as_ref()
                .is_some_and(|e| e.to_string().contains(failing)),
            format!("error should name {failing}, got {err:?}"),
        );
        check(
            r.logged("vmm stop") == 1,
            format!("VM not stopped: {:?}", r.log.lock().unwrap()),
        );
        check(
            r.pod_dirs().is_empty(),
            format!("state left: {:?}", r.pod_dirs()),
        );
        check(
            r.mounts_left().is_empty(),
            "mounts left under the state dir".into(),
        );
        check(
            matches!(r.pod.state(&init("c1")).await, Err(PodError::NotFound(_))),
            "container record left".into(),
        );
        // The pod is usable again: the next create boots a fresh VM.
        r.agent.fail.lock().unwrap().clear();
        check(
            r.create("c1").await.is_ok(),
            "create after the failure failed".into(),
        );
        check(
            r.logged("vmm start") == 2,
            "no fresh VM for the retry".into(),
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn a_failed_second_create_leaves_the_pod_running() {
    let r = rig();
    r.create("c1").await.unwrap();
    r.pod.start(&init("c1")).await.unwrap();
    r.agent.fail.lock().unwrap().insert("CreateContainer");
    assert!(r.create("c2").await.is_err());
    assert_eq!(r.logged("vmm stop"), 0, "the pod's VM must stay");
    let share = r.state_root().join("c1/shared");
    assert!(
        share.join("c1/rootfs/hello").exists(),
        "c1's rootfs must stay shared"
    );
    assert!(!share.join("c2").exists(), "c2's share dir must go");
    assert_eq!(
        r.pod.state(&init("c1")).await.unwrap().state,
        State::Running
    );
    r.agent.exit(&init("c1"), 0);
    r.pod.wait(&init("c1")).await.unwrap();
    r.pod.delete(&init("c1")).await.unwrap();
    assert_eq!(r.logged("vmm stop"), 1);
}

#[tokio::test]
async fn the_vm_powers_off_once_the_agent_has_destroyed_the_sandbox() {
    // (DestroySandbox fails, how the VM must stop)
    let cases = [
        (false, Stop::PowerOff),
        (
            true,
            Stop::Graceful {
                grace: Duration::from_secs(2),
            },
        ),
    ];
    for (destroy_fails, want) in cases {
        let agent = FakeAgent::default();
        if destroy_fails {
            agent.fail.lock().unwrap().insert("DestroySandbox");
        }
        let r = rig_with(SharedFs::VirtioFs, agent);
        r.create("c1").await.unwrap();
        r.pod.start(&init("c1")).await.unwrap();
        r.agent.exit(&init("c1"), 0);
        r.pod.wait(&init("c1")).await.unwrap();
        r.pod.delete(&init("c1")).await.unwrap();
        let log = r.log.lock().unwrap().clone();
        let stops: Vec<_> = log.iter().filter(|e| e.starts_with("vmm stop:")).collect();
        assert_eq!(
            stops,
            [&format!("vmm stop: {want:?}")],
            "DestroySandbox fails: {destroy_fails}; log {log:?}"
        );
    }
}

#[tokio::test]
async fn vm_death_makes_every_task_exit_255() {
    let r = rig();
    r.create("c1").await.unwrap();
    r.pod.start(&init("c1")).await.unwrap();
    let exec = ProcessRef::new("c1", "e1");
    r.pod
        .add_exec(&exec, Stdio::default(), b"{}".to_vec())
        .await
        .unwrap();
    r.pod.start(&exec).await.unwrap();
    let pid = r.pod.vmm_pid().await.expect("VMM pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut exits = r.exits(2).await;
    exits.sort_by(|a, b| a.0.exec_id.cmp(&b.0.exec_id));
    assert_eq!(exits, vec![(init("c1"), 255), (exec.clone(), 255)]);
    assert_eq!(r.pod.wait(&init("c1")).await.unwrap().status, 255);
    assert_eq!(r.pod.state(&exec).await.unwrap().state, State::Stopped);
    assert!(r.pod_dirs().is_empty(), "state left: {:?}", r.pod_dirs());
    assert_eq!(r.logged("DestroySandbox c1"), 0, "a dead VM is not asked");
    // The stopped records can still be deleted, and the pod then shuts down.
    r.pod.delete(&exec).await.unwrap();
    r.pod.delete(&init("c1")).await.unwrap();
    assert!(r.pod.shutdown().await);
}

#[tokio::test]
async fn removing_the_last_container_stops_the_vm_and_removes_its_state() {
    let r = rig();
    for id in ["c1", "c2"] {
        r.create(id).await.unwrap();
        r.pod.start(&init(id)).await.unwrap();
    }
    assert_eq!(r.logged("vmm start"), 1, "one VM for the pod");
    assert!(
        !r.pod.shutdown().await,
        "shutdown must wait for the containers"
    );
    for id in ["c1", "c2"] {
        r.pod.kill(&init(id), 9, false).await.unwrap();
        assert_eq!(r.pod.wait(&init(id)).await.unwrap().status, 137);
    }
    r.pod.delete(&init("c1")).await.unwrap();
    assert_eq!(r.logged("vmm stop"), 0, "c2 still needs the VM");
    assert_eq!(r.pod_dirs(), vec!["c1".to_string()]);
    let exit = r.pod.delete(&init("c2")).await.unwrap();
    assert_eq!(exit.map(|e| e.status), Some(137));
    assert_eq!(r.logged("DestroySandbox c1"), 1);
    assert_eq!(r.logged("vmm stop"), 1);
    assert!(r.pod_dirs().is_empty(), "state left: {:?}", r.pod_dirs());
    assert!(r.mounts_left().is_empty());
    assert!(r.pod.shutdown().await);
}

#[tokio::test]
async fn the_pod_serves_its_metrics_while_its_vm_runs() {
    let r = rig();
    r.create("c1").await.unwrap();
    r.create("c2").await.unwrap();
    let socket = r.state_root().join("c1").join(crate::metrics::SOCKET);
    let page = crate::metrics::http::fetch_unix(&socket, Duration::from_secs(5))
        .await
        .unwrap();
    for line in [
        r#"hyper_metrics_source_up{pod="c1",source="vmm"} 1"#,
        r#"hyper_metrics_source_up{pod="c1",source="agent"} 1"#,
        r#"hyper_vmm_boot_time_seconds{pod="c1"} 0.002"#,
        r#"hyper_guest_tasks{pod="c1",state="total"} 0"#,
    ] {
        assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
    }
    for series in [
        r#"hyper_process_threads{pod="c1",process="shim"}"#,
        r#"hyper_process_threads{pod="c1",process="vmm"}"#,
        r#"hyper_container_pids{pod="c1",container="c1"}"#,
        r#"hyper_container_pids{pod="c1",container="c2"}"#,
        r#"hyper_startup_step_seconds{pod="c1",step="vmm_spawned"}"#,
    ] {
        assert!(page.contains(series), "no {series} in\n{page}");
    }
    assert_eq!(r.logged("GuestMetrics"), 1);
    for id in ["c1", "c2"] {
        r.pod.delete(&init(id)).await.unwrap();
    }
    assert!(!socket.exists(), "the socket outlives the pod");
}

#[tokio::test]
async fn the_startup_trace_follows_the_first_container_from_boot_to_state_removed() {
    let r = rig();
    let (stdout, reader) = r.stdout_fifo();
    r.agent
        .stdout
        .lock()
        .unwrap()
        .insert(init("c1"), vec![b"hi".to_vec()]);
    let stdio = Stdio {
        stdout: stdout.display().to_string(),
        ..Default::default()
    };
    r.create_with("c1", stdio).await.unwrap();
    r.create("c2").await.unwrap();
    for id in ["c1", "c2"] {
        r.pod.start(&init(id)).await.unwrap();
    }
    // The second container's exit is not the pod's first container's.
    r.agent.exit(&init("c2"), 0);
    r.pod.wait(&init("c2")).await.unwrap();
    assert_eq!(r.trace.at(Step::ExitSeen), None);
    r.agent.exit(&init("c1"), 0);
    r.pod.wait(&init("c1")).await.unwrap();
    drop(reader);
    r.pod.delete(&init("c2")).await.unwrap();
    assert_eq!(r.trace.at(Step::DeleteReceived), None, "c1 is left");
    r.pod.delete(&init("c1")).await.unwrap();

    // Marked by the shim or the fake VMM: every step a pod passes inside the shim.
    let not_here = [
        Step::ShimSpawned,
        Step::ShimServing,
        Step::CreateReceived,
        Step::ConfigLoaded,
        // Only pods restored from a template (config `factory.template`).
        Step::TemplateReady,
        Step::VmRestored,
    ];
    let mut last = 0;
    for step in Step::ALL.into_iter().filter(|s| !not_here.contains(s)) {
        let at = r
            .trace
            .at(step)
            .unwrap_or_else(|| panic!("{step:?} not marked"));
        assert!(at >= last, "{step:?} before the step that precedes it");
        last = at;
    }
}

#[tokio::test]
async fn a_second_container_without_a_share_is_refused_clearly() {
    let r = rig_with(SharedFs::None, FakeAgent::default());
    r.create("c1").await.unwrap();
    let err = r.create("c2").await.unwrap_err();
    assert!(matches!(err, PodError::Unimplemented(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("c2") && message.contains("shared_fs"),
        "{message}"
    );
    assert_eq!(r.logged("vmm stop"), 0, "c1's VM must stay");
    assert_eq!(r.logged("CreateContainer c2"), 0);
    assert_eq!(
        r.pod.state(&init("c1")).await.unwrap().state,
        State::Created
    );
}

#[tokio::test]
async fn a_failed_start_stops_the_vm_when_nothing_else_can_run() {
    // (other containers of the pod, expected VM stops)
    let cases: &[(&[&str], usize)] = &[(&[], 1), (&["pause"], 0)];
    let mut failures = Vec::new();
    for (others, stops) in cases {
        let r = rig();
        for id in *others {
            r.create(id).await.unwrap();
            r.pod.start(&init(id)).await.unwrap();
        }
        r.create("bad").await.unwrap();
        r.agent.fail.lock().unwrap().insert("StartContainer");
        let case = format!("others {others:?}");
        if r.pod.start(&init("bad")).await.is_ok() {
            failures.push(format!("{case}: start should fail"));
        }
        // At once, before any Delete.
        if r.logged("vmm stop") != *stops {
            failures.push(format!(
                "{case}: {} VM stops, expected {stops}",
                r.logged("vmm stop")
            ));
        }
        if *stops == 1 && !r.pod_dirs().is_empty() {
            failures.push(format!("{case}: state left: {:?}", r.pod_dirs()));
        }
        match r.pod.state(&init("bad")).await {
            Ok(s) if s.state == State::Stopped && s.exit.is_some() => {}
            other => failures.push(format!("{case}: bad's state {other:?}")),
        }
        match r.pod.delete(&init("bad")).await {
            Ok(Some(e)) if e.status == START_FAILED_EXIT_STATUS => {}
            other => failures.push(format!("{case}: delete gave {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn exec_kill_wait_and_delete_keep_their_order() {
    let r = rig();
    r.create("c1").await.unwrap();
    let e1 = ProcessRef::new("c1", "e1");
    let expect = |what: &str, got: PodResult<()>, want: fn(&PodError) -> bool| match got {
        Err(e) if want(&e) => {}
        other => panic!("{what}: {other:?}"),
    };
    expect("start of an unknown exec", r.pod.start(&e1).await, |e| {
        matches!(e, PodError::NotFound(_))
    });
    r.pod.start(&init("c1")).await.unwrap();
    expect("second start", r.pod.start(&init("c1")).await, |e| {
        matches!(e, PodError::Precondition(_))
    });
    r.pod
        .add_exec(&e1, Stdio::default(), b"{}".to_vec())
        .await
        .unwrap();
    expect(
        "duplicate exec id",
        r.pod.add_exec(&e1, Stdio::default(), b"{}".to_vec()).await,
        |e| matches!(e, PodError::AlreadyExists(_)),
    );
    assert_eq!(r.pod.state(&e1).await.unwrap().state, State::Created);
    r.pod.start(&e1).await.unwrap();
    assert_eq!(r.pod.state(&e1).await.unwrap().state, State::Running);
    // A waiter that comes before the exit sees it.
    let waiter = {
        let pod = r.pod.clone();
        let e1 = e1.clone();
        tokio::spawn(async move { pod.wait(&e1).await })
    };
    r.pod.kill(&e1, 15, false).await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().status, 143);
    expect("kill after exit", r.pod.kill(&e1, 9, false).await, |e| {
        e.to_string().contains("already finished")
    });
    expect(
        "delete of a running container",
        r.pod.delete(&init("c1")).await.map(drop),
        |e| matches!(e, PodError::Precondition(_)),
    );
    assert_eq!(
        r.pod.delete(&e1).await.unwrap().map(|e| e.status),
        Some(143)
    );
    assert_eq!(r.logged("RemoveProcess c1/e1"), 1);
    assert_eq!(r.exits(1).await, vec![(e1.clone(), 143)]);
    r.pod.kill(&init("c1"), 9, false).await.unwrap();
    r.pod.wait(&init("c1")).await.unwrap();
    r.pod.delete(&init("c1")).await.unwrap();
    let log = r.log.lock().unwrap().clone();
    let pos = |e: &str| {
        log.iter()
            .position(|l| l == e)
            .unwrap_or_else(|| panic!("{e} not in {log:?}"))
    };
    assert!(pos("StartContainer c1") < pos("ExecProcess c1/e1"));
    assert!(pos("ExecProcess c1/e1") < pos("SignalProcess c1/e1 15"));
    assert!(pos("RemoveContainer c1") < pos("vmm stop"));
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

#[tokio::test]
async fn stdin_reaches_the_process_before_its_eof_even_when_closed_at_once() {
    // The agent takes 1000 bytes per write: a pipe with little room.
    let r = rig_with(
        SharedFs::VirtioFs,
        FakeAgent {
            max_write: 1000,
            ..Default::default()
        },
    );
    let stdin = r.dir.path().join("stdin");
    mkfifo(&stdin);
    let stdio = Stdio {
        stdin: stdin.display().to_string(),
        ..Default::default()
    };
    r.create_with("c1", stdio).await.unwrap();
    r.pod.start(&init("c1")).await.unwrap();
    let sent: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    // The client's end is open before CloseIO, as containerd's is before Create.
    let mut client = std::fs::OpenOptions::new()
        .write(true)
        .open(&stdin)
        .unwrap();
    let writer = {
        let sent = sent.clone();
        tokio::task::spawn_blocking(move || client.write_all(&sent).unwrap())
    };
    // CloseIO as ctr sends it: while its last bytes may still be in flight.
    r.pod.close_stdin(&init("c1")).await.unwrap();
    writer.await.unwrap();
    let closed = format!("CloseStdin c1/ after {} bytes", sent.len());
    for _ in 0..1000 {
        if r.logged(&closed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.logged(&closed), 1, "{:?}", r.log.lock().unwrap().last());
    assert!(*r.agent.stdin.lock().unwrap() == sent, "stdin bytes differ");
}

#[tokio::test]
async fn all_output_reaches_a_slow_reader_before_the_exit() {
    let r = rig();
    let (stdout, reader) = r.stdout_fifo();
    let chunks: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 32 * 1024]).collect();
    let sent: Vec<u8> = chunks.concat();
    r.agent.stdout.lock().unwrap().insert(init("c1"), chunks);
    let stdio = Stdio {
        stdout: stdout.display().to_string(),
        ..Default::default()
    };
    r.create_with("c1", stdio).await.unwrap();
    r.pod.start(&init("c1")).await.unwrap();
    // The process is done at once; its output is not.
    r.agent.exit(&init("c1"), 0);
    let read = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut reader = reader;
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
            // A slow reader: about 2 MiB/s.
            std::thread::sleep(Duration::from_millis(8));
        }
    });
    let exit = r.pod.wait(&init("c1")).await.unwrap();
    assert_eq!(exit.status, 0);
    let got = read.await.unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "stdout bytes differ");
}

/// A pod id case: the container id and annotations in, the id (or error start) out.
struct PodIdCase {
    name: &'static str,
    container: &'static str,
    annotations: &'static [(&'static str, &'static str)],
    want: Result<&'static str, &'static str>,
}

const GROUP: &str = "io.containerd.runc.v2.group";
const CRI: &str = "io.kubernetes.cri.sandbox-id";

fn annotation_map(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

#[test]
fn pod_id_follows_cri_then_runc_annotations() {
    let cases = [
        PodIdCase {
            name: "no annotations",
            container: "c1",
            annotations: &[],
            want: Ok("c1"),
        },
        PodIdCase {
            name: "runc group",
            container: "c1",
            annotations: &[(GROUP, "g")],
            want: Ok("g"),
        },
        PodIdCase {
            name: "CRI sandbox first",
            container: "c1",
            annotations: &[(GROUP, "g"), (CRI, "pod")],
            want: Ok("pod"),
        },
        PodIdCase {
            name: "bad CRI sandbox id",
            container: "c1",
            annotations: &[(CRI, "../x")],
            want: Err("pod id \"../x\" from annotation io.kubernetes.cri.sandbox-id is not"),
        },
        PodIdCase {
            name: "bad runc group",
            container: "c1",
            annotations: &[(GROUP, "a/b")],
            want: Err("pod id \"a/b\" from annotation io.containerd.runc.v2.group is not"),
        },
        PodIdCase {
            name: "bad container id as the pod id",
            container: "..",
            annotations: &[],
            want: Err("pod id \"..\" from the container id is not"),
        },
    ];
    let failures: Vec<String> = cases
        .into_iter()
        .filter_map(|c| {
            let annotations = annotation_map(c.annotations);
            let got = pod_id(c.container, annotations.as_ref()).map_err(|e| e.to_string());
            let ok = match (&got, c.want) {
                (Ok(got), Ok(want)) => got == want,
                (Err(got), Err(want)) => got.starts_with(want),
                _ => false,
            };
            (!ok).then(|| format!("{}: got {got:?}, want {:?}", c.name, c.want))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---- VM templates (config `factory.template`)

/// A rig that restores pods from templates; its kernel, image and VMM are files of its
/// own (the template key reads them).
fn template_rig(agent: FakeAgent) -> Rig {
    rig_configured(agent, |config, dir| {
        config.factory.template = true;
        let h = &mut config.hypervisor;
        for (name, slot) in [
            ("vmlinux", &mut h.kernel),
            ("initramfs", &mut h.image),
            ("hyper-vmm", &mut h.path),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, name).unwrap();
            *slot = p;
        }
    })
}

impl Rig {
    /// Another pod with this rig's config, fakes and log.
    fn another_pod(&self) -> Arc<Pod> {
        Pod::new(
            self.config.clone(),
            self.backend.clone(),
            self.events.clone(),
            Arc::new(StartupTrace::new()),
        )
    }

    /// The complete templates in the state dir.
    fn templates(&self) -> Vec<PathBuf> {
        let dir = self.state_root().join(crate::factory::TEMPLATES_DIR);
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What the fakes logged from entry `from` on.
    fn log_from(&self, from: usize) -> Vec<String> {
        self.log.lock().unwrap()[from..].to_vec()
    }
}

/// The fakes' log of a pod restored from its template, up to CreateSandbox.
fn restored(pod: &str) -> Vec<String> {
    [
        "vmm restore",
        "vmm start",
        "ReseedRandomDev 64",
        "SetGuestDateTime",
        &format!("CreateSandbox {pod}"),
    ]
    .map(String::from)
    .to_vec()
}

/// The fakes' log of a template's build.
const TEMPLATE_BUILT: [&str; 4] = [
    "vmm start",
    "vmm snapshot",
    "vmm stop",
    "vmm stop: PowerOff",
];

#[tokio::test]
async fn the_first_pod_builds_the_template_and_every_pod_restores_from_it() {
    let r = template_rig(FakeAgent::default());
    r.create("c1").await.unwrap();
    let log = r.log_from(0);
    assert_eq!(log[..4], TEMPLATE_BUILT, "{log:#?}");
    assert_eq!(log[4..9], restored("c1"), "{log:#?}");
    assert!(r.trace.at(Step::TemplateReady).is_some());
    let templates = r.templates();
    assert_eq!(templates.len(), 1, "{templates:?}");
    assert!(templates[0].join("inputs.txt").is_file());

    let second = r.another_pod();
    let before = r.log.lock().unwrap().len();
    r.create_in(&second, "c2", Stdio::default()).await.unwrap();
    let log = r.log_from(before);
    assert_eq!(log[..5], restored("c2"), "built again: {log:#?}");

    r.pod.delete(&init("c1")).await.unwrap();
    second.delete(&init("c2")).await.unwrap();
    assert_eq!(
        r.pod_dirs(),
        [crate::factory::TEMPLATES_DIR],
        "kept for the next pods"
    );
    assert_eq!(r.templates(), templates);
    assert!(r.mounts_left().is_empty(), "{:?}", r.mounts_left());
}

#[tokio::test]
async fn a_template_that_cannot_be_restored_is_discarded_and_the_pod_boots() {
    let r = template_rig(FakeAgent::default());
    r.create("c1").await.unwrap();
    r.pod.delete(&init("c1")).await.unwrap();
    let template = r.templates().pop().unwrap();
    std::fs::write(template.join("state.json"), "{\"truncated").unwrap();

    let second = r.another_pod();
    let before = r.log.lock().unwrap().len();
    r.create_in(&second, "c2", Stdio::default()).await.unwrap();
    let log = r.log_from(before);
    assert_eq!(
        log[..3],
        ["vmm restore refused", "vmm start", "CreateSandbox c2"],
        "{log:#?}"
    );
    assert!(
        r.templates().is_empty(),
        "the broken template is still there"
    );
    second.delete(&init("c2")).await.unwrap();

    // The next pod builds it anew.
    let third = r.another_pod();
    let before = r.log.lock().unwrap().len();
    r.create_in(&third, "c3", Stdio::default()).await.unwrap();
    let log = r.log_from(before);
    assert_eq!(log[..4], TEMPLATE_BUILT, "{log:#?}");
    assert_eq!(log[4..9], restored("c3"), "{log:#?}");
    third.delete(&init("c3")).await.unwrap();
}

#[tokio::test]
async fn a_restored_vm_whose_rng_cannot_be_reseeded_runs_nothing() {
    let agent = FakeAgent::default();
    agent.fail.lock().unwrap().insert("ReseedRandomDev");
    let r = template_rig(agent);
    r.create("c1").await.unwrap();
    let log = r.log_from(TEMPLATE_BUILT.len());
    let want = [
        "vmm restore",
        "vmm start",
        "ReseedRandomDev 64",
        "vmm stop",
        "vmm stop: PowerOff",
        "vmm start",
        "CreateSandbox c1",
    ];
    assert_eq!(log[..want.len()], want, "{log:#?}");
    assert!(r.templates().is_empty());
    r.pod.delete(&init("c1")).await.unwrap();
}

#[tokio::test]
async fn without_its_inputs_no_template_is_built_and_the_pod_boots() {
    // The default kernel, image and VMM paths do not exist here.
    let r = rig_configured(FakeAgent::default(), |c, _| c.factory.template = true);
    r.create("c1").await.unwrap();
    assert_eq!(r.log_from(0)[..2], ["vmm start", "CreateSandbox c1"]);
    assert_eq!(r.trace.at(Step::TemplateReady), None);
    r.pod.delete(&init("c1")).await.unwrap();
}
