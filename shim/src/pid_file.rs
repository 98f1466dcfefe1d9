//! Pid files that name one process, not whichever process has that pid today: the file
//! holds `<pid> <start time>` (field 22 of /proc/<pid>/stat, clock ticks since boot).
//! A reader opens a pidfd first and then checks the start time, so the check and a
//! later signal (sent through the pidfd) are about the same process.
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

/// What a pid file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    /// `None` in a pid-only file, as shims before this format wrote them.
    pub start_time: Option<u64>,
}

/// What a pid file says about its process now.
#[derive(Debug)]
pub enum Recorded {
    /// The very process the file recorded (pid, start time and binary match).
    Live(Process),
    /// A pid-only file whose pid runs the binary: maybe the recorded process, maybe a
    /// later one; safe to treat as alive, not to signal.
    Unverified(u32),
    /// No file, an unreadable one, or no such process any more.
    Gone,
}

/// A process held through a pidfd: signals reach it or fail, never a successor.
#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    pidfd: OwnedFd,
}

impl Process {
    /// The process that has `pid` now. Open it while the process cannot have been
    /// reaped yet (a child the caller has just spawned), or check who it is after.
    pub fn open(pid: u32) -> std::io::Result<Process> {
        Ok(Process {
            pid,
            pidfd: pidfd_open(pid)?,
        })
    }

    /// Returns once the process has exited, whoever reaps it: a pidfd turns readable
    /// when its process ends.
    pub async fn exited(&self) -> std::io::Result<()> {
        let fd = self.pidfd.try_clone()?;
        // SAFETY: the AsyncFd owns its fd (a duplicate of ours) until it is dropped.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        let _ = fd.readable().await?;
        Ok(())
    }

    pub fn signal(&self, signal: Signal) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal takes a pidfd, a signal, an optional siginfo (none:
        // as kill(2) would fill it) and flags; it touches no memory of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Records `pid` and its start time in `path`, mode 0600 whatever the umask. The file
/// appears whole (written aside, then renamed): a reader never sees half a record.
pub fn write(path: &Path, pid: u32) -> std::io::Result<()> {
    let start_time = start_time(pid)?;
    let aside = aside(path);
    let mut file = crate::state_dir::create_private_file(&aside)?;
    writeln!(file, "{pid} {start_time}")?;
    std::fs::rename(&aside, path)
}

/// The record in `path`; `None` when it is missing or is not a record.
pub fn read(path: &Path) -> Option<Record> {
    use std::io::Read;
    // A record is a few bytes; a big file is not one (and is not read whole).
    const MAX_RECORD: usize = 64;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_RECORD as u64 + 1)
        .read_to_string(&mut text)
        .ok()?;
    if text.len() > MAX_RECORD {
        return None;
    }
    parse(&text)
}

/// What the process recorded in `path` is now, if it still runs `binary`.
pub fn read_live(path: &Path, binary: &str) -> Recorded {
    let Some(record) = read(path) else {
        return Recorded::Gone;
    };
    let Ok(pidfd) = pidfd_open(record.pid) else {
        return Recorded::Gone;
    };
    // /proc now shows the pidfd's process or a later one with its pid; a later one has
    // a later start time, so a match below is the pidfd's process.
    if !runs(record.pid, binary) {
        return Recorded::Gone;
    }
    match record.start_time {
        None => Recorded::Unverified(record.pid),
        Some(t) if start_time(record.pid).ok() == Some(t) => Recorded::Live(Process {
            pid: record.pid,
            pidfd,
        }),
        Some(_) => Recorded::Gone,
    }
}

fn parse(text: &str) -> Option<Record> {
    let mut fields = text.split_ascii_whitespace();
    let pid = fields.next()?.parse::<u32>().ok()?;
    // pidfd_open takes a positive pid_t.
    if pid == 0 || libc::pid_t::try_from(pid).is_err() {
        return None;
    }
    let start_time = match fields.next() {
        Some(t) => Some(t.parse::<u64>().ok()?),
        None => None,
    };
    fields
        .next()
        .is_none()
        .then_some(Record { pid, start_time })
}

fn aside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}

/// The start time of process `pid`, in clock ticks since boot.
fn start_time(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat_start_time(&stat).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat has no start time"),
        )
    })
}

/// Field 22 of a /proc/<pid>/stat line. The command (field 2) is in parentheses and may
/// hold spaces and ')': the fields after it start after the last ')'.
fn stat_start_time(stat: &str) -> Option<u64> {
    let after_command = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the command.
    after_command
        .split_ascii_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()
}

/// Whether `pid`'s command line names `binary`.
fn runs(pid: u32, binary: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(binary))
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};

    /// A `sleep` of ours, killed and reaped when dropped.
    struct Sleeper(Child);

    impl Sleeper {
        fn start() -> Self {
            let child = Command::new("sleep")
                .arg("300")
                .spawn()
                .expect("spawn sleep");
            // spawn returns once the exec has replaced our memory, a moment before the
            // kernel has set up the new command line: wait for it.
            let cmdline = format!("/proc/{}/cmdline", child.id());
            for _ in 0..500 {
                if std::fs::read(&cmdline).is_ok_and(|c| !c.is_empty()) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Self(child)
        }
        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_pid_file_names_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let sleeper = Sleeper::start();
        let pid = sleeper.pid();
        let start = start_time(pid).unwrap();
        let dead = {
            let mut gone = Sleeper::start();
            let record = (gone.pid(), start_time(gone.pid()).unwrap());
            gone.0.kill().unwrap();
            gone.0.wait().unwrap();
            record
        };
        #[derive(Debug, PartialEq)]
        enum Want {
            Live(u32),
            Unverified(u32),
            Gone,
        }
        // (case, file content or None for `write`'s own, binary, want)
        let cases: Vec<(&str, Option<String>, &str, Want)> = vec![
            ("live matching process", None, "sleep", Want::Live(pid)),
            (
                "same pid, other start time",
                Some(format!("{pid} {}", start + 1)),
                "sleep",
                Want::Gone,
            ),
            (
                "dead pid",
                Some(format!("{} {}", dead.0, dead.1)),
                "sleep",
                Want::Gone,
            ),
            ("live process, other binary", None, "hyper-vmm", Want::Gone),
            (
                "pid only (an older shim's file)",
                Some(format!("{pid}\n")),
                "sleep",
                Want::Unverified(pid),
            ),
            ("garbage", Some("hello\n".into()), "sleep", Want::Gone),
            ("empty", Some(String::new()), "sleep", Want::Gone),
            (
                "bad start time",
                Some(format!("{pid} soon")),
                "sleep",
                Want::Gone,
            ),
            (
                "extra field",
                Some(format!("{pid} {start} 7")),
                "sleep",
                Want::Gone,
            ),
            ("pid 0", Some("0 5".into()), "sleep", Want::Gone),
            ("negative pid", Some("-1 5".into()), "sleep", Want::Gone),
            (
                "pid too big",
                Some("4294967295 5".into()),
                "sleep",
                Want::Gone,
            ),
            (
                "huge file",
                Some(format!("{pid} {start}{}", " ".repeat(1 << 20))),
                "sleep",
                Want::Gone,
            ),
        ];
        let mut failures = Vec::new();
        for (name, content, binary, want) in cases {
            let path = dir.path().join("x.pid");
            match content {
                Some(text) => std::fs::write(&path, text).unwrap(),
                None => write(&path, pid).unwrap(),
            }
            let got = match read_live(&path, binary) {
                Recorded::Live(p) => Want::Live(p.pid),
                Recorded::Unverified(p) => Want::Unverified(p),
                Recorded::Gone => Want::Gone,
            };
            if got != want {
                failures.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        let missing = read_live(&dir.path().join("missing.pid"), "sleep");
        if !matches!(missing, Recorded::Gone) {
            failures.push(format!("missing file: got {missing:?}"));
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn a_live_record_signals_its_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        let mut sleeper = Sleeper::start();
        write(&path, sleeper.pid()).unwrap();
        let Recorded::Live(p) = read_live(&path, "sleep") else {
            let pid = sleeper.pid();
            panic!(
                "the sleeper is not live: record {:?}, cmdline {:?}, start time {:?}, pidfd {:?}",
                read(&path),
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")),
                start_time(pid).ok(),
                pidfd_open(pid).map(drop)
            );
        };
        p.signal(Signal::SIGKILL).unwrap();
        let status = sleeper.0.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        // Reaped: the pidfd still names it, and a signal fails instead of going elsewhere.
        let e = p.signal(Signal::SIGKILL).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "{e}");
    }

    #[test]
    fn the_file_is_0600_and_whole() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("me.pid");
        write(&path, std::process::id()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        let record = read(&path).unwrap();
        assert_eq!(record.pid, std::process::id());
        assert_eq!(
            record.start_time,
            Some(start_time(std::process::id()).unwrap())
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["me.pid"], "nothing left aside");
    }

    #[test]
    fn the_start_time_is_field_22_whatever_the_command() {
        let fields_after = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 20 21";
        let cases = [
            ("plain", format!("123 (sleep) {fields_after}"), Some(4242)),
            (
                "spaces and parens in the command",
                format!("123 (a) b (c d) {fields_after}"),
                Some(4242),
            ),
            ("no command", "123 S 1 2".to_string(), None),
            ("cut short", "123 (sleep) S 1 2".to_string(), None),
        ];
        let failures: Vec<String> = cases
            .into_iter()
            .filter_map(|(name, stat, want)| {
                let got = stat_start_time(&stat);
                (got != want).then(|| format!("{name}: got {got:?}, want {want:?}"))
            })
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
