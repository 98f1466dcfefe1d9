//! Shared by the host tests: a busybox rootfs, a running agent on a unix socket, a client,
//! and OCI spec builders. Everything a test starts is stopped by pid and removed in Drop.
#![allow(dead_code)]
use hyper_agent_protocol::agent;
use hyper_agent_protocol::agent_ttrpc::AgentServiceClient;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Says that a test could not run, past libtest's output capture.
pub fn skip(msg: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("skipped: {msg}\n").as_bytes());
}

/// Prints the reason and returns true when the host cannot run these tests.
pub fn skip_unless_root(test: &str) -> bool {
    if !is_root() {
        skip(&format!("{test}: needs root (namespaces, mounts, cgroups)"));
        return true;
    }
    if !Path::new("/bin/busybox").exists() {
        skip(&format!(
            "{test}: /bin/busybox (busybox-static) is not installed"
        ));
        return true;
    }
    false
}

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

pub fn short_ctx(ms: u64) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_millis(ms).as_nanos() as i64)
}

/// The ttrpc status code of an error (panics on transport errors).
pub fn code(e: &ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not an RPC status: {other:?}"),
    }
}

pub fn message(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => format!("{other:?}"),
    }
}

/// Builds a busybox rootfs: /bin/busybox plus relative symlinks for every applet.
pub fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    let out = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let l = bin.join(applet.trim());
        if applet.trim().is_empty() || l.exists() {
            continue;
        }
        std::os::unix::fs::symlink("busybox", &l).unwrap();
    }
    for d in ["proc", "sys", "dev", "tmp", "etc", "root", "run", "var"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nextra:x:2000:\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/hostname"), "image\n").unwrap();
    std::fs::write(dir.join("etc/resolv.conf"), "nameserver 192.0.2.1\n").unwrap();
}

pub struct Harness {
    pub tmp: tempfile::TempDir,
    pub state: PathBuf,
    pub images: PathBuf,
    pub rootfs: PathBuf,
    pub cgroup_root: PathBuf,
    pub socket: PathBuf,
    pub agent: Option<Child>,
    pub agent_pid: i32,
    pub client: AgentServiceClient,
}

/// A cgroup2 mount the agent can use on this host (the unified hierarchy of a v1-hybrid
/// host has no controllers but does have freeze, procs and cpu.stat).
pub fn cgroup2_parent() -> Option<PathBuf> {
    for p in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
        let p = PathBuf::from(p);
        if let Ok(s) = nix::sys::statfs::statfs(&p)
            && s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC
        {
            return Some(p);
        }
    }
    None
}

impl Harness {
    pub async fn start(name: &str) -> Harness {
        Self::start_with(name, &[]).await
    }

    /// Starts the agent, optionally wrapped (e.g. `unshare -n`).
    pub async fn start_with(name: &str, wrapper: &[&str]) -> Harness {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("hyper-agent-{name}-"))
            .tempdir()
            .unwrap();
        let state = tmp.path().join("state");
        let images = tmp.path().join("images");
        let rootfs = images.join("busybox");
        busybox_rootfs(&rootfs);
        let cgroup_root = cgroup2_parent()
            .unwrap_or_else(|| PathBuf::from("/nonexistent"))
            .join(format!("hyper-test-{}-{name}", std::process::id()));
        let socket = tmp.path().join("agent.sock");
        // HYPER_AGENT_BIN runs the suite against another build (e.g. the static one).
        let bin = std::env::var("HYPER_AGENT_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_hyper-agent").into());
        let mut argv: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        argv.push(bin);
        let (prog, args) = argv.split_first().unwrap();
        let mut child = Command::new(prog)
            .args(args)
            .arg("--address")
            .arg(format!("unix://{}", socket.display()))
            .arg("--state-dir")
            .arg(&state)
            .arg("--cgroup-root")
            .arg(&cgroup_root)
            .arg("--allow-root")
            .arg(&images)
            .env(
                "HYPER_AGENT_LOG",
                std::env::var("HYPER_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.starts_with(hyper_agent_protocol::READY_MARKER) {
                    let _ = tx.send(());
                }
                line.clear();
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("agent never printed its READY line");
        let client = ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display()))
            .await
            .unwrap();
        let agent_pid = child.id() as i32;
        Harness {
            tmp,
            state,
            images,
            rootfs,
            cgroup_root,
            socket,
            agent: Some(child),
            agent_pid,
            client: AgentServiceClient::new(client),
        }
    }

    pub fn has_cgroups(&self) -> bool {
        self.cgroup_root.is_dir()
    }

    pub async fn create(
        &self,
        id: &str,
        spec: serde_json::Value,
        stdin: bool,
    ) -> ttrpc::Result<agent::Empty> {
        self.client
            .create_container(
                ctx(),
                &agent::CreateContainerRequest {
                    container_id: id.into(),
                    oci_spec_json: spec.to_string().into_bytes(),
                    rootfs: self.rootfs.to_string_lossy().into_owned(),
                    stdin,
                    ..Default::default()
                },
            )
            .await
    }

    pub async fn start_container(&self, id: &str) -> ttrpc::Result<agent::Empty> {
        self.client
            .start_container(
                ctx(),
                &agent::StartContainerRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> agent::WaitProcessResponse {
        self.client
            .wait_process(
                ctx(),
                &agent::WaitProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
    }

    /// Reads a stream to its end.
    pub async fn read_all(&self, id: &str, exec_id: &str, stderr: bool) -> String {
        let mut out = Vec::new();
        loop {
            let req = agent::ReadStreamRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                len: 4096,
                ..Default::default()
            };
            let r = if stderr {
                self.client.read_stderr(ctx(), &req).await
            } else {
                self.client.read_stdout(ctx(), &req).await
            }
            .unwrap();
            if r.data.is_empty() {
                break;
            }
            out.extend_from_slice(&r.data);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads until `needle` shows up (or panics after `secs`).
    pub async fn read_until(&self, id: &str, exec_id: &str, needle: &str, secs: u64) -> String {
        let mut out = String::new();
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !out.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never saw {needle:?}; got {out:?}"
            );
            let r = self
                .client
                .read_stdout(
                    ctx(),
                    &agent::ReadStreamRequest {
                        container_id: id.into(),
                        exec_id: exec_id.into(),
                        len: 4096,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert!(!r.data.is_empty(), "EOF before {needle:?}; got {out:?}");
            out.push_str(&String::from_utf8_lossy(&r.data));
        }
        out
    }

    /// Create, start, collect stdout/stderr, wait, remove.
    pub async fn run(&self, id: &str, spec: serde_json::Value) -> (i32, String, String) {
        self.create(id, spec, false).await.unwrap();
        self.start_container(id).await.unwrap();
        let (out, err) = tokio::join!(self.read_all(id, "", false), self.read_all(id, "", true));
        let st = self.wait(id, "").await;
        self.remove(id).await.unwrap();
        (st.status, out, err)
    }

    pub async fn remove(&self, id: &str) -> ttrpc::Result<agent::Empty> {
        self.client
            .remove_container(
                ctx(),
                &agent::RemoveContainerRequest {
                    container_id: id.into(),
                    timeout: 0,
                    ..Default::default()
                },
            )
            .await
    }

    pub async fn signal(
        &self,
        id: &str,
        exec_id: &str,
        sig: i32,
        all: bool,
    ) -> ttrpc::Result<agent::Empty> {
        self.client
            .signal_process(
                ctx(),
                &agent::SignalProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    signal: sig as u32,
                    all,
                    ..Default::default()
                },
            )
            .await
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: serde_json::Value,
        stdin: bool,
    ) -> ttrpc::Result<agent::Empty> {
        self.client
            .exec_process(
                ctx(),
                &agent::ExecProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    process_json: process.to_string().into_bytes(),
                    stdin,
                    ..Default::default()
                },
            )
            .await
    }

    /// The pid of the container's process whose command contains `needle`, waiting up to
    /// 10 s for it: right after Start its init may not have exec'd the command yet.
    pub async fn pid_of(&self, id: &str, needle: &str) -> i32 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let procs = self.pids(id).await;
            if let Some(p) = procs.iter().find(|p| p.command.contains(needle)) {
                return p.pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no process of {id} runs {needle:?} after 10 s: {procs:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub async fn pids(&self, id: &str) -> Vec<agent::ProcessInfo> {
        self.client
            .list_processes(
                ctx(),
                &agent::ListProcessesRequest {
                    container_id: id.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .processes
    }

    /// Stops the agent (SIGTERM, then SIGKILL by pid) and returns its exit status.
    pub fn stop_agent(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.agent.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop_agent();
        // Whatever the agent left behind (it should have left nothing) goes too.
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut mps: Vec<&str> = mi
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| Path::new(m).starts_with(self.tmp.path()))
                .collect();
            mps.reverse();
            for m in mps {
                let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if let Ok(rd) = std::fs::read_dir(&self.cgroup_root) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup_root);
    }
}

/// A runc-like spec for the busybox rootfs running `args`.
pub fn spec(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "box",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"],
                "effective": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"],
                "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/acpi", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/proc/bus"]
        }
    })
}

/// An OCI Process for exec.
pub fn process(args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/"
    })
}

pub fn ns_link(pid: i32, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state instead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}
