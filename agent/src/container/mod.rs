//! A container: its init process (blocked until Start), exec'd processes, cgroup and
//! storages, and the lifecycle operations on them.
//!
//! Its processes are created by the `__init` helper: `spec` turns the OCI spec into the
//! helper's `config`, `spawn` runs the helper from the agent, and `child` is the helper
//! itself, inside the new namespaces. The processes it yields are plain `process` ones.
pub mod child;
pub mod config;
pub mod devices;
pub mod spawn;
pub mod spec;

use crate::cgroups::Cgroup;
use crate::error::{AgentError, Result, internal, invalid};
use crate::process::{ExitWatch, Process, Streams};
use config::{InitConfig, Kind, Ns};
use hyper_agent_protocol::agent;
use nix::sys::signal::Signal;
use spawn::{Spawned, Starter};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

type Execs = Arc<Mutex<HashMap<String, Arc<Process>>>>;

pub struct Container {
    pub id: String,
    pub cgroup: Option<Cgroup>,
    pub init: Arc<Process>,
    state: Mutex<State>,
    starter: tokio::sync::Mutex<Option<Starter>>,
    execs: Execs,
    /// Storages mounted for this container alone, unmounted on removal.
    pub storages: Vec<PathBuf>,
    /// The container's seccomp filters, also applied to exec'd processes.
    seccomp: Vec<crate::seccomp::Program>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ns_inode(pid: i32, ns: Ns) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/{pid}/ns/{}", ns.proc_name())).ok()?;
    Some((m.dev(), m.ino()))
}

fn self_ns_inode(ns: Ns) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/self/ns/{}", ns.proc_name())).ok()?;
    Some((m.dev(), m.ino()))
}

/// Parses a signal number from the wire.
pub fn signal(n: u32) -> Result<Signal> {
    Signal::try_from(n as i32).map_err(|_| invalid(format!("signal: {n} is not a signal")))
}

impl Container {
    /// Wraps a set-up init process. When init exits, every exec'd process is killed, as
    /// runc does.
    pub fn new(
        id: String,
        cgroup: Option<Cgroup>,
        spawned: Spawned,
        streams: Streams,
        storages: Vec<PathBuf>,
        seccomp: Vec<crate::seccomp::Program>,
    ) -> Arc<Self> {
        let execs: Execs = Arc::default();
        let execs2 = execs.clone();
        let cg = cgroup.clone();
        let exit = ExitWatch::new(spawned.exit, move |code| {
            tracing::info!(code, "container init exited");
            for p in lock(&execs2).values() {
                let _ = p.signal(Signal::SIGKILL);
            }
            if let Some(cg) = cg {
                for pid in cg.pids() {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        });
        let init = Arc::new(Process {
            exec_id: String::new(),
            pid: spawned.pid,
            streams,
            exit,
        });
        let c = Arc::new(Container {
            id,
            cgroup,
            init,
            state: Mutex::new(State::Created),
            starter: tokio::sync::Mutex::new(Some(spawned.starter)),
            execs,
            storages,
            seccomp,
        });
        let weak = Arc::downgrade(&c);
        let init_exit = c.init.exit.clone();
        tokio::spawn(async move {
            init_exit.wait().await;
            if let Some(c) = weak.upgrade() {
                *lock(&c.state) = State::Stopped;
            }
        });
        c
    }

    pub fn state(&self) -> State {
        if self.init.exit_code().is_some() {
            return State::Stopped;
        }
        *lock(&self.state)
    }

    pub async fn start(&self) -> Result<()> {
        let starter = self.starter.lock().await.take();
        let Some(starter) = starter else {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                self.id,
                self.state()
            )));
        };
        if self.init.exit_code().is_some() {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} init has already exited",
                self.id
            )));
        }
        starter.start().await?;
        let mut st = lock(&self.state);
        if *st == State::Created {
            *st = State::Running;
        }
        Ok(())
    }

    /// The process named by `exec_id` (empty: init).
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            AgentError::NotFound(format!(
                "exec {exec_id:?} not found in container {}",
                self.id
            ))
        })
    }

    /// Forgets an exec'd process once it has exited, so its id can be used again and its
    /// streams are freed (containerd deletes each exec when it is done with it).
    pub fn remove_exec(&self, exec_id: &str) -> Result<()> {
        crate::error::check_id("exec_id", exec_id)?;
        let mut execs = lock(&self.execs);
        let p = execs.get(exec_id).ok_or_else(|| {
            AgentError::NotFound(format!(
                "exec {exec_id:?} not found in container {}",
                self.id
            ))
        })?;
        if p.exit_code().is_none() {
            return Err(AgentError::FailedPrecondition(format!(
                "exec {exec_id:?} of container {} is still running",
                self.id
            )));
        }
        execs.remove(exec_id);
        Ok(())
    }

    /// Namespaces of the running init that an exec'd process must enter.
    fn exec_namespaces(&self) -> Vec<(Ns, PathBuf)> {
        let pid = self.init.pid;
        Ns::ALL
            .iter()
            .filter(|ns| {
                ns_inode(pid, **ns).is_some() && ns_inode(pid, **ns) != self_ns_inode(**ns)
            })
            .map(|ns| {
                (
                    *ns,
                    PathBuf::from(format!("/proc/{pid}/ns/{}", ns.proc_name())),
                )
            })
            .collect()
    }

    pub async fn exec(&self, req: &agent::ExecProcessRequest) -> Result<()> {
        crate::error::check_id("exec_id", &req.exec_id)?;
        if self.state() != State::Running {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} is {:?}, not running",
                self.id,
                self.state()
            )));
        }
        if lock(&self.execs).contains_key(&req.exec_id) {
            return Err(AgentError::AlreadyExists(format!(
                "exec {:?} already exists in container {}",
                req.exec_id, self.id
            )));
        }
        let p: oci_spec::runtime::Process = spec::parse_json(&req.process_json, "process_json")?;
        let mut pc = spec::process_config("process_json", &p)?;
        pc.seccomp = self.seccomp.clone();
        let tty = p.terminal().unwrap_or(false);
        let winsize = p
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        let cfg = InitConfig {
            kind: Kind::Exec,
            join: self.exec_namespaces(),
            new: Vec::new(),
            cgroup_procs: self.cgroup.as_ref().map(|c| c.procs_file()),
            rootfs: None,
            hostname: None,
            domainname: None,
            sysctl: Vec::new(),
            oom_score_adj: p.oom_score_adj(),
            process: pc,
            tty,
        };
        let (streams, child) = Streams::new(tty, req.stdin, winsize)?;
        let spawned = spawn::spawn(cfg, child).await?;
        let pid = spawned.pid;
        let exec_id = req.exec_id.clone();
        let exit = ExitWatch::new(spawned.exit, move |code| {
            tracing::info!(exec_id, code, "exec'd process exited");
        });
        let proc = Arc::new(Process {
            exec_id: req.exec_id.clone(),
            pid,
            streams,
            exit,
        });
        {
            let mut execs = lock(&self.execs);
            if execs.contains_key(&req.exec_id) {
                let _ = proc.signal(Signal::SIGKILL);
                return Err(AgentError::AlreadyExists(format!(
                    "exec {:?} already exists",
                    req.exec_id
                )));
            }
            execs.insert(req.exec_id.clone(), proc.clone());
        }
        if let Err(e) = spawned.starter.start().await {
            lock(&self.execs).remove(&req.exec_id);
            let _ = proc.signal(Signal::SIGKILL);
            return Err(e.into());
        }
        Ok(())
    }

    /// Every pid of the container: its cgroup, else init, execs and whatever shares
    /// init's private pid namespace.
    pub fn all_pids(&self) -> Vec<i32> {
        if let Some(cg) = &self.cgroup {
            return cg.pids();
        }
        let mut pids = Vec::new();
        if self.init.exit_code().is_none() {
            pids.push(self.init.pid);
            if let Some(ns) = ns_inode(self.init.pid, Ns::Pid)
                && Some(ns) != self_ns_inode(Ns::Pid)
                && let Ok(rd) = std::fs::read_dir("/proc")
            {
                for e in rd.flatten() {
                    if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
                        && pid != self.init.pid
                        && ns_inode(pid, Ns::Pid) == Some(ns)
                    {
                        pids.push(pid);
                    }
                }
            }
        }
        for p in lock(&self.execs).values() {
            if p.exit_code().is_none() && !pids.contains(&p.pid) {
                pids.push(p.pid);
            }
        }
        pids
    }

    pub fn signal(&self, exec_id: &str, sig: Signal, all: bool) -> Result<()> {
        if all {
            for pid in self.all_pids() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
            return Ok(());
        }
        let p = self.process(exec_id)?;
        p.signal(sig).map_err(|e| match e {
            nix::errno::Errno::ESRCH => AgentError::NotFound(format!(
                "process {:?} of container {} has already exited",
                exec_id, self.id
            )),
            e => internal(format!("kill: {e}")),
        })
    }

    pub fn list_processes(&self) -> Vec<agent::ProcessInfo> {
        let known: HashMap<i32, String> = lock(&self.execs)
            .values()
            .map(|p| (p.pid, p.exec_id.clone()))
            .collect();
        let mut pids = self.all_pids();
        pids.sort();
        pids.into_iter()
            .map(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|b| {
                        b.split(|c| *c == 0)
                            .filter(|s| !s.is_empty())
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                agent::ProcessInfo {
                    pid,
                    exec_id: known.get(&pid).cloned().unwrap_or_default(),
                    command: cmd,
                    ..Default::default()
                }
            })
            .collect()
    }

    fn cgroup_or_precondition(&self, what: &str) -> Result<&Cgroup> {
        self.cgroup.as_ref().ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "{what} needs a cgroup v2 hierarchy; container {} has no cgroup",
                self.id
            ))
        })
    }

    pub async fn pause(&self, pause: bool) -> Result<()> {
        let cg = self.cgroup_or_precondition("pause/resume")?.clone();
        let st = self.state();
        let want_from = if pause { State::Running } else { State::Paused };
        if st != want_from {
            return Err(AgentError::FailedPrecondition(format!(
                "container {} is {st:?}, not {want_from:?}",
                self.id
            )));
        }
        tokio::task::spawn_blocking(move || cg.freeze(pause))
            .await
            .map_err(internal)??;
        *lock(&self.state) = if pause { State::Paused } else { State::Running };
        Ok(())
    }

    pub fn update(&self, resources_json: &[u8]) -> Result<()> {
        let res: oci_spec::runtime::LinuxResources =
            spec::parse_json(resources_json, "resources_json")?;
        let cg = self.cgroup_or_precondition("update")?;
        cg.apply(&res)?;
        Ok(())
    }

    pub fn stats(&self) -> agent::StatsContainerResponse {
        let mut r = agent::StatsContainerResponse::default();
        if let Some(cg) = &self.cgroup {
            r.cpu = Some(cg.cpu_stats()).into();
            r.memory = Some(cg.memory_stats()).into();
            r.pids = Some(cg.pids_stats()).into();
            r.io = cg.io_stats();
            r.hugetlb = cg.hugetlb_stats();
        } else {
            r.pids = Some(agent::PidsStats {
                current: self.all_pids().len() as u64,
                ..Default::default()
            })
            .into();
        }
        r.network = crate::network::interface_stats(std::path::Path::new("/sys/class/net"));
        r
    }

    /// Stops everything: SIGTERM, up to `timeout` to exit, then SIGKILL; waits for init.
    pub async fn kill_all(&self, timeout: Duration) {
        if self.init.exit_code().is_none() && !timeout.is_zero() {
            if let Some(cg) = &self.cgroup {
                let _ = cg.freeze(false);
            }
            let _ = self.signal("", Signal::SIGTERM, true);
            let _ = tokio::time::timeout(timeout, self.init.exit.wait()).await;
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.freeze(false);
        }
        let _ = self.signal("", Signal::SIGKILL, true);
        let _ = self.init.signal(Signal::SIGKILL);
        if tokio::time::timeout(Duration::from_secs(10), self.init.exit.wait())
            .await
            .is_err()
        {
            tracing::warn!(id = %self.id, "init did not exit after SIGKILL");
        }
        let execs: Vec<_> = lock(&self.execs).values().cloned().collect();
        for p in execs {
            let _ = p.signal(Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), p.exit.wait()).await;
        }
    }

    /// After `kill_all`: cgroup and storages go.
    pub async fn cleanup(&self) {
        if let Some(cg) = self.cgroup.clone() {
            let _ = tokio::task::spawn_blocking(move || cg.destroy()).await;
        }
        for s in self.storages.iter().rev() {
            crate::storage::unmount(s);
        }
    }
}
