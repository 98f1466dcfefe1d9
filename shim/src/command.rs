//! Running a helper program (mke2fs) from inside the shim.
//!
//! The shim is a child subreaper whose SIGCHLD handler reaps every child and reports the
//! exit through containerd-shim's monitor, so `Command::output()` can lose the race and
//! fail with ECHILD. This takes the status from whichever side gets it.
use std::io::Read;
use std::process::{Command, Stdio};

use containerd_shim::asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe};
use containerd_shim::monitor::{Subject, Topic};

pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub async fn output(mut cmd: Command) -> std::io::Result<Output> {
    let mut sub = monitor_subscribe(Topic::Pid).await.ok();
    let result = async {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id() as i32;
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let (stdout, stderr, waited) = tokio::task::spawn_blocking(move || {
            let err_reader = std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(e) = err.as_mut() {
                    let _ = e.read_to_end(&mut buf);
                }
                buf
            });
            let mut stdout = Vec::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut stdout);
            }
            let stderr = err_reader.join().unwrap_or_default();
            (stdout, stderr, child.wait())
        })
        .await
        .map_err(std::io::Error::other)?;
        let code = match waited {
            Ok(status) => status.code().unwrap_or(128 + 9),
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
                // The shim's reaper got it first: its exit is on the monitor.
                let sub = sub
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("child reaped elsewhere, no monitor"))?;
                loop {
                    match sub.rx.recv().await {
                        Some(ev) if matches!(ev.subject, Subject::Pid(p) if p == pid) => {
                            break ev.exit_code;
                        }
                        Some(_) => continue,
                        None => return Err(std::io::Error::other("exit monitor closed")),
                    }
                }
            }
            Err(e) => return Err(e),
        };
        Ok(Output {
            code,
            stdout,
            stderr,
        })
    }
    .await;
    if let Some(s) = sub {
        let _ = monitor_unsubscribe(s.id).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn collects_output_and_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let o = output(cmd).await.unwrap();
        assert_eq!(o.code, 3);
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr, b"err\n");
    }
}
