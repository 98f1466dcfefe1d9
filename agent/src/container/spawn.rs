//! The agent's side of the `__init` helper (`child`): starts it with its pipes, sends it
//! the `InitConfig`, follows its status until the process is set up, and releases the
//! process into its exec on Start.
use super::child;
use super::config::{InitConfig, Status};
use crate::process::{ChildStdio, ProcessError, errno, io};
use crate::reaper::Reaper;
use nix::fcntl::OFlag;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use tokio::sync::oneshot;

/// A process set up by the helper, blocked until `starter.start()`.
pub struct Spawned {
    pub pid: i32,
    pub exit: oneshot::Receiver<i32>,
    pub starter: Starter,
}

/// Releases a set-up process into its exec.
pub struct Starter {
    start: File,
    status: BufReader<File>,
}

fn read_status(r: &mut BufReader<File>) -> Option<Status> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => serde_json::from_str(&line).ok(),
    }
}

/// Runs the helper for `cfg` with `stdio` as its stdin, stdout and stderr, and waits
/// until the process is set up (or failed).
pub async fn spawn(cfg: InitConfig, stdio: ChildStdio) -> Result<Spawned, ProcessError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("spawn".into())
        .spawn(move || {
            let _ = tx.send(spawn_blocking(&cfg, stdio));
        })
        .map_err(io("spawn thread"))?;
    let (spawned, helper_exit) = rx
        .await
        .map_err(|_| ProcessError::Setup("spawn thread died".into()))??;
    // The helper's stage 1 exits right after the ack; collect it (the reaper already did).
    let _ = helper_exit.await;
    Ok(spawned)
}

type HelperResult = Result<(Spawned, oneshot::Receiver<i32>), ProcessError>;

fn spawn_blocking(cfg: &InitConfig, stdio: ChildStdio) -> HelperResult {
    let (cfg_r, cfg_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe"))?;
    let (st_r, st_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe"))?;
    let (start_r, start_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe"))?;
    let [stdin, stdout, stderr] = stdio;
    let fds = [cfg_r.as_raw_fd(), st_w.as_raw_fd(), start_r.as_raw_fd()];
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg(child::ARG)
        .env_clear()
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 3];
            for (i, fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, fd) in high.iter().enumerate() {
                if libc::dup2(*fd, child::CONFIG_FD + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (_child, helper_exit) = Reaper::global().spawn_watched(|| {
        let c = cmd.spawn().map_err(io("spawn helper"))?;
        let pid = c.id() as i32;
        Ok::<_, ProcessError>((c, pid))
    })?;
    tracing::debug!(kind = ?cfg.kind, "helper started");
    drop((cfg_r, st_w, start_r));
    drop(cmd);
    let mut cfg_w = File::from(cfg_w);
    let mut status = BufReader::new(File::from(st_r));
    let mut line = serde_json::to_vec(cfg).map_err(|e| ProcessError::Setup(e.to_string()))?;
    line.push(b'\n');
    cfg_w.write_all(&line).map_err(io("write helper config"))?;
    // Stage 1 reports the pid, stage 2 reports Ready: both write the same pipe, in
    // either order.
    let mut pid = None;
    let mut exit = None;
    let mut ready = false;
    let fail = |pid: Option<i32>, e: ProcessError| {
        if let Some(p) = pid {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::SIGKILL);
        }
        Err(e)
    };
    while pid.is_none() || !ready {
        let st = read_status(&mut status);
        tracing::debug!(?st, "helper status");
        match st {
            Some(Status::Pid(p)) if pid.is_none() => {
                exit = Some(Reaper::global().watch_fresh(p));
                pid = Some(p);
                // Stage 1 may exit now: the reaper knows whom the stage 2 status goes to.
                let _ = cfg_w.write_all(b"k");
            }
            Some(Status::Ready) if !ready => ready = true,
            Some(Status::Error(e)) => return fail(pid, ProcessError::Setup(e)),
            other => return fail(pid, ProcessError::Setup(format!("helper said {other:?}"))),
        }
    }
    drop(cfg_w);
    match (pid, exit) {
        (Some(pid), Some(exit)) => Ok((
            Spawned {
                pid,
                exit,
                starter: Starter {
                    start: File::from(start_w),
                    status,
                },
            },
            helper_exit,
        )),
        _ => Err(ProcessError::Setup("helper reported no pid".into())),
    }
}

impl Starter {
    /// Lets the process exec its program; returns the exec error if there was one.
    pub async fn start(self) -> Result<(), ProcessError> {
        let Starter {
            mut start,
            mut status,
        } = self;
        tokio::task::spawn_blocking(move || {
            start.write_all(b"s").map_err(io("start"))?;
            drop(start);
            match read_status(&mut status) {
                None => Ok(()),
                Some(Status::Error(e)) => Err(ProcessError::Exec(e)),
                Some(other) => Err(ProcessError::Exec(format!("unexpected {other:?}"))),
            }
        })
        .await
        .map_err(|e| ProcessError::Exec(e.to_string()))?
    }
}
