//! Processes the agent starts: stdio (pipes or a pty) with bounded buffers, exit
//! statuses, signals. How a process is created (the `__init` helper) is the container's
//! business (`container::spawn`); nothing here knows about containers.
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, watch};

/// Bytes per read from a child's stdout/stderr.
const CHUNK: usize = 32 * 1024;
/// Chunks buffered per stream before the child blocks on write (back-pressure).
const CHUNKS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("container setup failed: {0}")]
    Setup(String),
    #[error("exec failed: {0}")]
    Exec(String),
    #[error("stdin is closed or was not requested")]
    StdinClosed,
    #[error("process has no terminal")]
    NoTty,
}

/// Maps an I/O error to `ProcessError::Io` naming `what` failed.
pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ProcessError {
    move |e| ProcessError::Io(what, e)
}

/// Maps an errno to `ProcessError::Io` naming `what` failed.
pub(crate) fn errno(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> ProcessError {
    move |e| ProcessError::Io(what, e.into())
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), ProcessError> {
    let fl = fcntl(fd, FcntlArg::F_GETFL).map_err(errno("F_GETFL"))?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK),
    )
    .map_err(errno("F_SETFL"))?;
    Ok(())
}

fn register(fd: OwnedFd, what: &'static str) -> Result<AsyncFd<OwnedFd>, ProcessError> {
    // SAFETY: the OwnedFd is moved into the AsyncFd, which keeps it open for its lifetime.
    unsafe { AsyncFd::register(fd) }.map_err(|e| ProcessError::Io(what, e.into_parts().1))
}

/// A child's stdout or stderr: filled by a reader task, drained by ReadStdout/ReadStderr.
pub struct OutputStream {
    /// Chunks from the reader task (None: no stream) and the unread rest of the last one.
    inner: tokio::sync::Mutex<(Option<Chunks>, Vec<u8>)>,
}

type Chunks = mpsc::Receiver<Vec<u8>>;

impl OutputStream {
    fn new(fd: Option<OwnedFd>) -> Result<Self, ProcessError> {
        let Some(fd) = fd else {
            return Ok(Self {
                inner: tokio::sync::Mutex::new((None, Vec::new())),
            });
        };
        set_nonblocking(&fd)?;
        let afd = register(fd, "register output")?;
        let (tx, rx) = mpsc::channel(CHUNKS);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let Ok(mut guard) = afd.readable().await else {
                    break;
                };
                match guard.try_io(|f| nix::unistd::read(f.get_ref(), &mut buf).map_err(Into::into))
                {
                    Ok(Ok(0)) | Ok(Err(_)) => break, // EOF; EIO on a pty whose slave closed
                    Ok(Ok(n)) => {
                        if tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                    Err(_would_block) => continue,
                }
            }
        });
        Ok(Self {
            inner: tokio::sync::Mutex::new((Some(rx), Vec::new())),
        })
    }

    /// Up to `max` bytes; waits for at least one. Empty means end of stream.
    pub async fn read(&self, max: usize) -> Vec<u8> {
        let max = max.clamp(1, 1 << 20);
        let mut g = self.inner.lock().await;
        let (rx, leftover) = &mut *g;
        if leftover.is_empty() {
            match rx.as_mut() {
                None => return Vec::new(),
                Some(rx) => match rx.recv().await {
                    Some(chunk) => *leftover = chunk,
                    None => return Vec::new(),
                },
            }
        }
        let n = max.min(leftover.len());
        let rest = leftover.split_off(n);
        std::mem::replace(leftover, rest)
    }
}

/// The agent's ends of a process's stdio.
pub struct Streams {
    stdin: tokio::sync::Mutex<Option<AsyncFd<OwnedFd>>>,
    pub stdout: OutputStream,
    pub stderr: OutputStream,
    tty: Option<OwnedFd>,
}

/// The child's ends: stdin, stdout, stderr.
pub type ChildStdio = [OwnedFd; 3];

impl Streams {
    /// Pipes (or one pty) for a new process. `winsize` is (rows, columns).
    pub fn new(
        tty: bool,
        stdin: bool,
        winsize: Option<(u16, u16)>,
    ) -> Result<(Self, ChildStdio), ProcessError> {
        if tty {
            let ws = winsize.map(|(r, c)| nix::pty::Winsize {
                ws_row: r,
                ws_col: c,
                ws_xpixel: 0,
                ws_ypixel: 0,
            });
            let pty = nix::pty::openpty(ws.as_ref(), None).map_err(errno("openpty"))?;
            // openpty's fds are inheritable: without this the container's processes would
            // hold the master (and a stray slave) of their own terminal.
            for fd in [&pty.master, &pty.slave] {
                nix::fcntl::fcntl(
                    fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
                )
                .map_err(errno("FD_CLOEXEC on the pty"))?;
            }
            let out = pty.master.try_clone().map_err(io("dup pty"))?;
            let input = pty.master.try_clone().map_err(io("dup pty"))?;
            set_nonblocking(&input)?;
            let child = [
                pty.slave.try_clone().map_err(io("dup pty"))?,
                pty.slave.try_clone().map_err(io("dup pty"))?,
                pty.slave,
            ];
            let streams = Streams {
                stdin: tokio::sync::Mutex::new(Some(register(input, "register stdin")?)),
                stdout: OutputStream::new(Some(out))?,
                stderr: OutputStream::new(None)?,
                tty: Some(pty.master),
            };
            return Ok((streams, child));
        }
        let (child_in, our_in) = if stdin {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe"))?;
            set_nonblocking(&w)?;
            (r, Some(register(w, "register stdin")?))
        } else {
            let null = File::open("/dev/null").map_err(io("open /dev/null"))?;
            (OwnedFd::from(null), None)
        };
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe"))?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe"))?;
        let streams = Streams {
            stdin: tokio::sync::Mutex::new(our_in),
            stdout: OutputStream::new(Some(out_r))?,
            stderr: OutputStream::new(Some(err_r))?,
            tty: None,
        };
        Ok((streams, [child_in, out_w, err_w]))
    }

    /// Writes what the pipe takes now (at least one byte, waiting for room if needed).
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize, ProcessError> {
        if data.is_empty() {
            return Ok(0);
        }
        let g = self.stdin.lock().await;
        let afd = g.as_ref().ok_or(ProcessError::StdinClosed)?;
        let mut written = 0;
        while written < data.len() {
            let mut guard = afd.writable().await.map_err(io("stdin"))?;
            match guard
                .try_io(|f| nix::unistd::write(f.get_ref(), &data[written..]).map_err(Into::into))
            {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => {
                    if written > 0 {
                        break;
                    }
                    // The reader is gone (the process exited or closed its stdin).
                    if e.raw_os_error() == Some(libc::EPIPE) {
                        return Err(ProcessError::StdinClosed);
                    }
                    return Err(ProcessError::Io("write stdin", e));
                }
                Err(_would_block) if written > 0 => break,
                Err(_would_block) => continue,
            }
        }
        Ok(written)
    }

    /// EOF for the process's stdin: closes the pipe, or sends ^D on a terminal.
    pub async fn close_stdin(&self) -> Result<(), ProcessError> {
        let mut g = self.stdin.lock().await;
        if self.tty.is_some() {
            if let Some(afd) = g.as_ref() {
                let _ = nix::unistd::write(afd.get_ref(), &[4u8]);
            }
            return Ok(());
        }
        g.take();
        Ok(())
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ProcessError> {
        let fd = self.tty.as_ref().ok_or(ProcessError::NoTty)?;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(ProcessError::Io(
                "TIOCSWINSZ",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// Exit status of a process, shared by every WaitProcess caller.
#[derive(Clone)]
pub struct ExitWatch(watch::Receiver<Option<i32>>);

impl ExitWatch {
    /// Watches `exit`; `on_exit` runs once the status is known, before waiters wake.
    pub fn new(exit: oneshot::Receiver<i32>, on_exit: impl FnOnce(i32) + Send + 'static) -> Self {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let code = exit.await.unwrap_or(255);
            on_exit(code);
            let _ = tx.send(Some(code));
        });
        ExitWatch(rx)
    }

    pub fn code(&self) -> Option<i32> {
        *self.0.borrow()
    }

    pub async fn wait(&self) -> i32 {
        let mut rx = self.0.clone();
        match rx.wait_for(|c| c.is_some()).await {
            Ok(c) => c.unwrap_or(255),
            Err(_) => 255,
        }
    }
}

/// A started (or about to be started) process of a container.
pub struct Process {
    pub exec_id: String,
    pub pid: i32,
    pub streams: Streams,
    pub exit: ExitWatch,
}

impl Process {
    pub fn exit_code(&self) -> Option<i32> {
        self.exit.code()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<(), nix::errno::Errno> {
        if self.exit_code().is_some() {
            return Err(nix::errno::Errno::ESRCH);
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig)
    }
}
