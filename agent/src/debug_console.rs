//! The guest debug console (`hyperctl exec --sandbox POD`): on vsock port
//! [`DEBUG_CONSOLE_VSOCK_PORT`](hyper_agent_protocol::DEBUG_CONSOLE_VSOCK_PORT), only when
//! the kernel command line holds [`debug_console::KERNEL_PARAM`] (the shim's
//! `agent.debug_console`, off by default). Each connection asks for a command, a shell when
//! it names none, which runs on a pty of its own in the guest itself, outside every
//! container, as root; the stream is that pty until the command ends. Closing the stream
//! hangs the session up (SIGHUP to its process group), as closing a terminal does.
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_agent_protocol::debug_console::{self, Request};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::reaper::Reaper;

/// How long the host may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The guest image's shell (busybox), run when the request names no command.
const SHELL: &str = "/bin/sh";
const ENV: [(&str, &str); 4] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/"),
    ("TERM", "xterm"),
    ("PS1", "[guest \\w]# "),
];

/// Whether the kernel command line turns the console on.
pub fn enabled(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|w| w == debug_console::KERNEL_PARAM)
}

/// Accepts console sessions on vsock `port` for as long as the agent runs.
pub fn serve(port: u32) -> Result<()> {
    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
    let listener = tokio_vsock::VsockListener::bind(addr)
        .with_context(|| format!("bind the debug console on vsock port {port}"))?;
    tracing::warn!(
        port,
        "debug console on: a root shell in the guest for whoever reaches this port"
    );
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(session(stream));
        }
    });
    Ok(())
}

/// One session: the request, the reply, then the pty both ways.
pub async fn session<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(mut stream: S) {
    let started = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream))
        .await
        .unwrap_or_else(|_| Err(format!("no request within {REQUEST_TIMEOUT:?}")))
        .and_then(|req| start(&req).map(|s| (req, s)));
    let reply = debug_console::reply(&started.as_ref().map(|_| ()).map_err(Clone::clone));
    if stream.write_all(&reply).await.is_err() {
        return;
    }
    let (req, (pid, master)) = match started {
        Ok(s) => s,
        Err(why) => {
            tracing::info!("debug console request refused: {why}");
            return;
        }
    };
    tracing::info!(pid, argv = ?req.argv, "debug console session");
    if let Err(e) = relay(stream, master, pid).await {
        tracing::debug!(pid, "debug console session ended: {e}");
    }
}

async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, String> {
    let mut head = [0u8; 4];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| format!("read the request: {e}"))?;
    let mut body = vec![0u8; Request::body_len(head)?];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("read the request: {e}"))?;
    Request::parse_body(&body)
}

/// Starts the request's command as the leader of a new session whose controlling
/// terminal is a new pty; gives its pid and the pty's master.
fn start(req: &Request) -> Result<(i32, OwnedFd), String> {
    let ws = nix::pty::Winsize {
        ws_row: if req.rows == 0 { 24 } else { req.rows },
        ws_col: if req.cols == 0 { 80 } else { req.cols },
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).map_err(|e| format!("openpty: {e}"))?;
    nix::fcntl::fcntl(
        &pty.master,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| format!("FD_CLOEXEC on the pty: {e}"))?;
    let (program, args) = match req.argv.split_first() {
        Some((p, a)) => (p.as_str(), a.to_vec()),
        None => (SHELL, vec!["-l".to_string()]),
    };
    let stdio = || -> Result<Stdio, String> {
        Ok(Stdio::from(
            pty.slave
                .try_clone()
                .map_err(|e| format!("dup the pty: {e}"))?,
        ))
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(&args)
        .env_clear()
        .envs(ENV)
        .current_dir("/")
        .stdin(stdio()?)
        .stdout(stdio()?)
        .stderr(stdio()?);
    // SAFETY: between fork and exec the child only calls setsid and ioctl, both
    // async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Registered with the reaper, which owns every exit status in the guest.
    let (pid, _exit) = Reaper::global()
        .spawn_watched(|| {
            let pid = cmd.spawn()?.id() as i32;
            Ok::<_, std::io::Error>((pid, pid))
        })
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    // The command holds the only slave ends now: when it (and whatever it started) is
    // gone, reading the master gives EIO, the session's end.
    drop(cmd);
    drop(pty.slave);
    Ok((pid, pty.master))
}

/// The pty's output to the stream until the session has no process left on it, the
/// stream's input to the pty meanwhile; a closed stream hangs the session up.
async fn relay<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    master: OwnedFd,
    pid: i32,
) -> std::io::Result<()> {
    let input = std::fs::File::from(master.try_clone()?);
    let output = std::fs::File::from(master);
    let (mut from_host, mut to_host) = tokio::io::split(stream);
    let hangup = tokio::spawn(async move {
        let mut input = tokio::fs::File::from_std(input);
        let _ = tokio::io::copy(&mut from_host, &mut input).await;
        // The host is gone: hang up, as a closed terminal does.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGHUP);
    });
    let fd = output.as_raw_fd();
    let mut output = tokio::fs::File::from_std(output);
    let mut buf = vec![0u8; 16 * 1024];
    let res = loop {
        match output.read(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = to_host.write_all(&buf[..n]).await {
                    break Err(e);
                }
            }
            // EIO: no process has the pty's slave open any more.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    tracing::debug!(pid, fd, "debug console output done");
    let _ = to_host.shutdown().await;
    hangup.abort();
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_parameter_turns_it_on() {
        let cases = [
            ("console=ttyS0 hyper.debug_console=1 quiet", true),
            ("console=ttyS0 quiet", false),
            ("hyper.debug_console=0", false),
            ("xhyper.debug_console=1", false),
        ];
        for (cmdline, want) in cases {
            assert_eq!(enabled(cmdline), want, "{cmdline}");
        }
    }

    /// The host's side of a session over `client`: sends `req`, gives the reply line
    /// and everything after it.
    async fn converse(req: Request, input: &[u8]) -> (String, String) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let agent = tokio::spawn(session(server));
        client.write_all(&req.encode().unwrap()).await.unwrap();
        client.write_all(input).await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut all))
            .await
            .expect("the session ends")
            .unwrap();
        agent.await.unwrap();
        let text = String::from_utf8_lossy(&all).replace('\r', "");
        let (reply, rest) = text.split_once('\n').unwrap_or((&text, ""));
        (reply.to_string(), rest.to_string())
    }

    #[tokio::test]
    async fn a_command_runs_on_a_terminal_and_the_session_ends_with_it() {
        let req = Request {
            rows: 33,
            cols: 101,
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "stty size; tty -s && echo on-a-tty; read l; echo got $l".into(),
            ],
        };
        let (reply, out) = converse(req, b"typed\n").await;
        assert_eq!(reply, "OK");
        assert!(out.contains("33 101"), "{out:?}");
        assert!(out.contains("on-a-tty"), "{out:?}");
        assert!(out.contains("got typed"), "{out:?}");
    }

    #[tokio::test]
    async fn a_command_that_cannot_run_is_refused_by_name() {
        let req = Request {
            argv: vec!["/nonexistent/shell".into()],
            ..Default::default()
        };
        let (reply, out) = converse(req, b"").await;
        assert!(
            reply.starts_with("ERR cannot run /nonexistent/shell"),
            "{reply:?}"
        );
        assert_eq!(out, "");
    }
}
