//! The guest's state: the pod (hostname, DNS, network, storages, shared namespaces) and
//! its containers, keyed by id.
use crate::cgroups;
use crate::container::config::{InitConfig, Kind, Ns, ProcessConfig};
use crate::container::spawn;
use crate::container::spec::{self, Inputs, PodContext};
use crate::container::{Container, State};
use crate::error::{AgentError, Result, check_id, internal, invalid};
use crate::process::{ExitWatch, Streams};
use crate::{mount, network, storage};
use hyper_agent_protocol::agent;
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// How the agent was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the agent keeps pod files and storage mount points.
    pub state_dir: PathBuf,
    /// Parent cgroup (v2) of the containers' cgroups.
    pub cgroup_root: PathBuf,
    /// Extra roots a rootfs or bind source may come from.
    pub allow_roots: Vec<PathBuf>,
    /// The agent is the guest's PID 1.
    pub is_init: bool,
}

struct Pod {
    id: String,
    dir: PathBuf,
    holder_pid: i32,
    holder_exit: ExitWatch,
    storages: Vec<PathBuf>,
    shm: PathBuf,
    ctx: PodContext,
}

enum Slot {
    Creating,
    Ready(Arc<Container>),
}

pub struct Sandbox {
    pub opts: Options,
    cgroups: cgroups::Manager,
    pod: tokio::sync::Mutex<Option<Pod>>,
    containers: Mutex<HashMap<String, Slot>>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> AgentError {
    move |e| internal(format!("{what}: {e}"))
}

fn dev_null() -> Result<[OwnedFd; 3]> {
    let f = || -> Result<OwnedFd> {
        Ok(std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(io_err("/dev/null"))?
            .into())
    };
    Ok([f()?, f()?, f()?])
}

/// Undo steps run in reverse when a create fails half-way.
#[derive(Default)]
struct Undo(Vec<Box<dyn FnOnce() + Send>>);

impl Undo {
    fn push(&mut self, f: impl FnOnce() + Send + 'static) {
        self.0.push(Box::new(f));
    }
    fn commit(mut self) {
        self.0.clear();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some(f) = self.0.pop() {
            f();
        }
    }
}

fn check_line(field: &str, s: &str) -> Result<()> {
    if s.contains(['\n', '\r', '\0']) {
        return Err(invalid(format!("{field}: {s:?} must be a single line")));
    }
    Ok(())
}

impl Sandbox {
    pub fn new(opts: Options) -> Self {
        let cgroups = cgroups::Manager::new(&opts.cgroup_root);
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Sandbox {
            opts,
            cgroups,
            pod: tokio::sync::Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
        }
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        match lock(&self.containers).get(id) {
            Some(Slot::Ready(c)) => Ok(c.clone()),
            _ => Err(AgentError::NotFound(format!("container {id:?} not found"))),
        }
    }

    /// Mounts `list` and registers their unmount with `undo`, for a failure later on.
    fn mount_storages(&self, list: &[agent::Storage], undo: &mut Undo) -> Result<Vec<PathBuf>> {
        let storages = storage::mount_all(
            "storages",
            list,
            &self.opts.state_dir,
            &self.allowed_roots(&[]),
        )
        .map_err(|e| match e {
            storage::StorageError::Invalid { .. } | storage::StorageError::Path(_) => invalid(e),
            e => internal(e),
        })?;
        let s = storages.clone();
        undo.push(move || s.iter().rev().for_each(|m| storage::unmount(m)));
        Ok(storages)
    }

    fn allowed_roots(&self, extra: &[PathBuf]) -> Vec<PathBuf> {
        let mut r = vec![self.opts.state_dir.clone()];
        r.extend(self.opts.allow_roots.iter().cloned());
        r.extend(extra.iter().cloned());
        r
    }

    // ---- pod ----

    pub async fn create_sandbox(&self, req: &agent::CreateSandboxRequest) -> Result<()> {
        check_id("sandbox_id", &req.sandbox_id)?;
        let mut pod = self.pod.lock().await;
        if let Some(p) = pod.as_ref() {
            return Err(AgentError::AlreadyExists(format!(
                "sandbox {:?} already exists",
                p.id
            )));
        }
        if !req.hostname.is_empty() {
            spec::validate_hostname("hostname", &req.hostname)?;
        }
        for (i, l) in req.dns.iter().enumerate() {
            check_line(&format!("dns[{i}]"), l)?;
        }
        for (i, l) in req.hosts.iter().enumerate() {
            check_line(&format!("hosts[{i}]"), l)?;
        }
        if !req.host_netns.is_empty() && !req.host_netns.starts_with('/') {
            return Err(invalid(format!(
                "host_netns: {:?} is not an absolute path",
                req.host_netns
            )));
        }
        check_line("host_netns", &req.host_netns)?;
        network::validate(req).map_err(invalid)?;
        for (i, s) in req.storages.iter().enumerate() {
            storage::validate(&format!("storages[{i}]"), s, &self.opts.state_dir)
                .map_err(invalid)?;
        }

        let mut undo = Undo::default();
        let dir = self.opts.state_dir.join("sandbox");
        std::fs::create_dir_all(&dir).map_err(io_err(dir.display()))?;
        {
            let d = dir.clone();
            undo.push(move || {
                let _ = std::fs::remove_dir_all(d);
            });
        }
        let hostname = if req.hostname.is_empty() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            req.hostname.clone()
        };
        let mut hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        );
        for l in &req.hosts {
            hosts.push_str(l);
            hosts.push('\n');
        }
        let mut etc_files = vec![
            (PathBuf::from("/etc/hosts"), dir.join("hosts")),
            (PathBuf::from("/etc/hostname"), dir.join("hostname")),
        ];
        std::fs::write(dir.join("hosts"), &hosts).map_err(io_err("write hosts"))?;
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))
            .map_err(io_err("write hostname"))?;
        if !req.dns.is_empty() {
            let resolv: String = req.dns.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(dir.join("resolv.conf"), resolv).map_err(io_err("write resolv.conf"))?;
            etc_files.push(("/etc/resolv.conf".into(), dir.join("resolv.conf")));
        }

        let shm = dir.join("shm");
        std::fs::create_dir_all(&shm).map_err(io_err("mkdir shm"))?;
        nix::mount::mount(
            Some("shm"),
            &shm,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        )
        .map_err(|e| internal(format!("mount pod shm: {e}")))?;
        {
            let s = shm.clone();
            undo.push(move || mount::umount_recursive(&s));
        }

        let storages = self.mount_storages(&req.storages, &mut undo)?;

        // The holder: PID 1 of the pod's shared namespaces.
        let mut new = vec![Ns::Ipc, Ns::Uts];
        if req.sandbox_pidns {
            new.push(Ns::Pid);
        }
        let cfg = InitConfig {
            kind: Kind::Holder,
            join: Vec::new(),
            new,
            cgroup_procs: None,
            rootfs: None,
            hostname: Some(hostname.clone()),
            domainname: None,
            sysctl: Vec::new(),
            oom_score_adj: None,
            process: ProcessConfig::default(),
            tty: false,
        };
        let spawned = spawn::spawn(cfg, dev_null()?).await?;
        let holder_pid = spawned.pid;
        let holder_exit = ExitWatch::new(spawned.exit, |code| {
            tracing::warn!(code, "sandbox namespace holder exited")
        });
        drop(spawned.starter);
        undo.push(move || {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(holder_pid), Signal::SIGKILL);
        });

        if !(req.interfaces.is_empty() && req.routes.is_empty() && req.neighbors.is_empty()) {
            network::setup(req).await.map_err(|e| match e {
                network::NetError::Invalid { .. }
                | network::NetError::NoSuchMac { .. }
                | network::NetError::NoSuchDevice { .. } => invalid(e),
                e => internal(e),
            })?;
        }
        if self.opts.is_init {
            // The guest itself is the pod: its own files and hostname follow it.
            let _ = std::fs::create_dir_all("/etc");
            for (dest, src) in &etc_files {
                if let Err(e) = std::fs::copy(src, dest) {
                    tracing::warn!("{}: {e}", dest.display());
                }
            }
            let _ = nix::unistd::sethostname(&hostname);
        }
        let proc_ns = |n: &str| PathBuf::from(format!("/proc/{holder_pid}/ns/{n}"));
        let ctx = PodContext {
            in_sandbox: true,
            ipc_ns: Some(proc_ns("ipc")),
            uts_ns: Some(proc_ns("uts")),
            pid_ns: req.sandbox_pidns.then(|| proc_ns("pid")),
            sandbox_pid_ns: None,
            host_task_pid: (req.host_task_pid != 0).then_some(req.host_task_pid),
            host_netns: (!req.host_netns.is_empty()).then(|| PathBuf::from(&req.host_netns)),
            etc_files,
            shm_dir: Some(shm.clone()),
        };
        undo.commit();
        tracing::info!(id = %req.sandbox_id, holder_pid, "sandbox created");
        *pod = Some(Pod {
            id: req.sandbox_id.clone(),
            dir,
            holder_pid,
            holder_exit,
            storages,
            shm,
            ctx,
        });
        Ok(())
    }

    pub async fn destroy_sandbox(&self, id: &str) -> Result<()> {
        let mut pod = self.pod.lock().await;
        match pod.as_ref() {
            Some(p) if p.id == id => {}
            _ => return Err(AgentError::NotFound(format!("sandbox {id:?} not found"))),
        }
        self.remove_all(Duration::ZERO).await;
        if let Some(p) = pod.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.holder_pid), Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), p.holder_exit.wait()).await;
            for s in p.storages.iter().rev() {
                storage::unmount(s);
            }
            mount::umount_recursive(&p.shm);
            let _ = std::fs::remove_dir_all(&p.dir);
        }
        Ok(())
    }

    /// Removes every container and the pod, whatever its id (agent exit).
    pub async fn teardown(&self) {
        let id = self.pod.lock().await.as_ref().map(|p| p.id.clone());
        match id {
            Some(id) => {
                let _ = self.destroy_sandbox(&id).await;
            }
            None => self.remove_all(Duration::ZERO).await,
        }
    }

    /// Kills and removes every container.
    pub async fn remove_all(&self, timeout: Duration) {
        let ids: Vec<String> = lock(&self.containers).keys().cloned().collect();
        for id in ids {
            let _ = self.remove_container(&id, timeout).await;
        }
    }

    /// Sends `sig` to every process of every container.
    pub fn signal_all(&self, sig: Signal) {
        let cs: Vec<Arc<Container>> = lock(&self.containers)
            .values()
            .filter_map(|s| match s {
                Slot::Ready(c) => Some(c.clone()),
                Slot::Creating => None,
            })
            .collect();
        for c in cs {
            let _ = c.signal("", sig, true);
        }
    }

    // ---- containers ----

    pub async fn create_container(&self, req: &agent::CreateContainerRequest) -> Result<()> {
        check_id("container_id", &req.container_id)?;
        let id = req.container_id.clone();
        {
            let mut cs = lock(&self.containers);
            if cs.contains_key(&id) {
                return Err(AgentError::AlreadyExists(format!(
                    "container {id:?} already exists"
                )));
            }
            cs.insert(id.clone(), Slot::Creating);
        }
        let res = self.do_create(req).await;
        let mut cs = lock(&self.containers);
        match res {
            Ok(c) => {
                cs.insert(id, Slot::Ready(c));
                Ok(())
            }
            Err(e) => {
                cs.remove(&id);
                Err(e)
            }
        }
    }

    async fn do_create(&self, req: &agent::CreateContainerRequest) -> Result<Arc<Container>> {
        let id = &req.container_id;
        let spec: oci_spec::runtime::Spec = spec::parse_json(&req.oci_spec_json, "oci_spec_json")?;
        let pod_ctx = match self.pod.lock().await.as_ref() {
            Some(p) => PodContext {
                sandbox_pid_ns: self.sandbox_pid_ns(&p.id),
                ..p.ctx.clone()
            },
            None => PodContext::default(),
        };
        let mut undo = Undo::default();
        let storages = self.mount_storages(&req.storages, &mut undo)?;
        let allowed = self.allowed_roots(&storages);
        let (field, rootfs) = if !req.rootfs.is_empty() {
            ("rootfs", PathBuf::from(&req.rootfs))
        } else {
            (
                "oci_spec_json.root.path",
                spec.root()
                    .as_ref()
                    .map(|r| r.path().clone())
                    .ok_or_else(|| invalid("rootfs: empty and the spec has no root.path"))?,
            )
        };
        let rootfs = mount::check_under_roots(field, &rootfs, &allowed)?;
        if !rootfs.is_dir() {
            return Err(invalid(format!(
                "{field}: {} is not a directory",
                rootfs.display()
            )));
        }
        let cgroup = self.cgroups.create(id)?;
        if let Some(cg) = cgroup.clone() {
            undo.push(move || cg.destroy());
        }
        let cfg = spec::container_config(
            &spec,
            &Inputs {
                rootfs: &rootfs,
                pod: &pod_ctx,
                allowed_roots: &allowed,
                cgroup_procs: cgroup.as_ref().map(|c| c.procs_file()),
            },
        )
        .map_err(|e| invalid(format!("oci_spec_json.{e}")))?;
        if let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            match &cgroup {
                Some(cg) => cg.apply(res)?,
                None => {
                    // Without a cgroup v2 hierarchy limits cannot be enforced; say so loudly.
                    if !cgroups::resource_writes(res)?.is_empty() {
                        tracing::warn!(id, "linux.resources ignored: no cgroup v2 hierarchy");
                    }
                }
            }
        }
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| invalid("process: missing"))?;
        let winsize = process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        let (streams, child) = Streams::new(cfg.tty, req.stdin, winsize)?;
        let seccomp = cfg.process.seccomp.clone();
        let spawned = spawn::spawn(cfg, child).await?;
        let c = Container::new(id.clone(), cgroup, spawned, streams, storages, seccomp);
        undo.commit();
        if c.cgroup.is_some() {
            self.watch_oom(Arc::downgrade(&c));
        }
        tracing::info!(id, pid = c.init.pid, "container created");
        Ok(c)
    }

    /// The PID namespace of the sandbox container (the one whose id is the pod's, CRI's
    /// pause) while its init runs.
    fn sandbox_pid_ns(&self, pod_id: &str) -> Option<PathBuf> {
        match lock(&self.containers).get(pod_id) {
            Some(Slot::Ready(c)) if c.state() != State::Stopped => {
                Some(PathBuf::from(format!("/proc/{}/ns/pid", c.init.pid)))
            }
            _ => None,
        }
    }

    fn watch_oom(&self, c: Weak<Container>) {
        let tx = self.oom_tx.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Some(c) = c.upgrade() else { break };
                let Some(cg) = &c.cgroup else { break };
                let n = cg.oom_kills();
                if n > seen {
                    seen = n;
                    tracing::info!(id = %c.id, "OOM kill");
                    let _ = tx.send(c.id.clone());
                }
                if c.state() == State::Stopped {
                    break;
                }
            }
        });
    }

    pub async fn next_oom_event(&self) -> Option<String> {
        self.oom_rx.lock().await.recv().await
    }

    pub async fn remove_container(&self, id: &str, timeout: Duration) -> Result<()> {
        let c = self.container(id)?;
        c.kill_all(timeout).await;
        c.cleanup().await;
        lock(&self.containers).remove(id);
        tracing::info!(id, "container removed");
        Ok(())
    }
}
