//! `hyper-vmm` as a separate process per pod: a VM escape or a VMM crash must not take
//! the shim down. Configured with one JSON file (`<run_dir>/vm.json`, a
//! `hyper_vmm_api::VmConfig`), controlled over its API socket with typed requests
//! (`hyper_vmm_api::Request` out, `hyper_vmm_api::Reply` back, one JSON line each).
use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use hyper_vmm_api::{
    BASE_CMDLINE, BlockConfig, FsCacheMode, FsConfig, JailConfig, MAX_VCPUS, NetConfig, Reply,
    Request, SerialOutputConfig, SnapshotConfig, SnapshotFilesConfig, Success, VmConfig,
    VsockConfig,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::pid_file::Process;
use crate::state_dir::{create_private_file, make_private_dir};

use super::{Hypervisor, HypervisorError, SnapshotFiles, SnapshotUse, Stop, VmSpec, VmmMetrics};

/// Guest CID of every VM: each VM has its own vsock device, so they need not differ.
pub const GUEST_CID: u32 = 3;
/// The VMM finds the pod's taps at fds 3, 4, ... (the config names them).
const FIRST_TAP_FD: RawFd = 3;
/// How long a control request may take, connect to reply, before it is an error.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a `snapshot` request may take: it writes all of guest memory.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a VMM may take to exit after `poweroff` or SIGKILL: it only stops its
/// vCPUs and removes its sockets.
const POWER_OFF_WAIT: Duration = Duration::from_secs(2);
/// Longest reply line read from the VMM (a `metrics` reply is a few KiB).
const MAX_REPLY_LINE: u64 = 64 << 10;

/// In the VM's run dir: the directory of the VMM's sockets, the only part of the run dir
/// the jailed VMM can write (not its config, pid files or logs).
pub const SOCKET_DIR: &str = "vm";

/// The control socket of the VM whose run dir is `run_dir`.
pub fn api_socket_in(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_DIR).join("vmm.sock")
}

/// The hybrid-vsock socket of the VM whose run dir is `run_dir`.
pub fn vsock_uds_in(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_DIR).join("vsock.sock")
}

pub struct HyperVmm {
    binary: PathBuf,
    /// Per-VM directory for the config, the sockets (and the console log, if kept).
    run_dir: PathBuf,
    /// Run the VMM in its jail (`[hypervisor] jail`).
    jail: bool,
    /// Its threads under their seccomp filters (`[hypervisor] seccomp`).
    seccomp: bool,
    /// The VMM through a pidfd opened at spawn, before anyone could reap it: what
    /// `stop` waits on and signals, never a later process with its pid.
    process: Option<Process>,
}

impl HyperVmm {
    pub fn new(binary: PathBuf, run_dir: PathBuf) -> Self {
        Self {
            binary,
            run_dir,
            jail: true,
            seccomp: true,
            process: None,
        }
    }

    /// With `false`, the VMM runs unjailed (debugging).
    pub fn jailed(mut self, jail: bool) -> Self {
        self.jail = jail;
        self
    }

    /// With `false`, the VMM runs without seccomp filters (debugging).
    pub fn with_seccomp(mut self, seccomp: bool) -> Self {
        self.seccomp = seccomp;
        self
    }

    /// The empty directory the jailed VMM's `/` is mounted on (only it sees the mount).
    pub fn jail_root(&self) -> PathBuf {
        self.run_dir.join("root")
    }

    pub fn api_socket(&self) -> PathBuf {
        api_socket_in(&self.run_dir)
    }

    /// Where `start` writes the VM's config (`hyper-vmm --config` reads it).
    pub fn config_path(&self) -> PathBuf {
        self.run_dir.join("vm.json")
    }

    /// The VMM's config for `spec`; separate from `start` so it can be tested.
    pub fn vm_config(&self, spec: &VmSpec) -> Result<VmConfig, HypervisorError> {
        let vcpus = u8::try_from(spec.vcpus)
            .ok()
            .filter(|v| (1..=MAX_VCPUS).contains(v))
            .ok_or_else(|| {
                invalid(format!(
                    "vcpus {} is not in 1..={MAX_VCPUS} (hyper-vmm's limit)",
                    spec.vcpus
                ))
            })?;
        let mut cfg = VmConfig::new(spec.kernel.clone());
        cfg.initrd = Some(spec.initrd.clone());
        cfg.cmdline = Some(kernel_cmdline(spec));
        cfg.vcpus = vcpus;
        cfg.memory_mib = u64::from(spec.memory_mib);
        cfg.serial = match &spec.console_log {
            Some(p) => SerialOutputConfig::File(p.clone()),
            None => SerialOutputConfig::None,
        };
        cfg.vsock = Some(VsockConfig {
            uds: self.vsock_uds(),
            cid: u64::from(GUEST_CID),
        });
        cfg.api_socket = Some(self.api_socket());
        cfg.rng = true;
        cfg.block = spec
            .disks
            .iter()
            .map(|d| BlockConfig {
                path: d.path.clone(),
                read_only: d.read_only,
                serial: (!d.serial.is_empty()).then(|| d.serial.clone()),
            })
            .collect();
        cfg.fs = spec
            .shares
            .iter()
            .map(|f| {
                Ok(FsConfig {
                    tag: f.tag.clone(),
                    shared_dir: f.path.clone(),
                    cache: f
                        .cache
                        .parse::<FsCacheMode>()
                        .map_err(|e| invalid(format!("share {:?}: {e}", f.tag)))?,
                    writeback: false,
                    xattr: true,
                })
            })
            .collect::<Result<_, HypervisorError>>()?;
        cfg.net = (0..)
            .zip(&spec.nets)
            .map(|(i, n)| NetConfig {
                tap: None,
                fd: Some(FIRST_TAP_FD + i),
                mac: Some(n.mac.clone()),
            })
            .collect();
        cfg.jail = self.jail.then(|| JailConfig {
            root: self.jail_root(),
            cgroup: spec.cgroup.clone(),
        });
        cfg.seccomp = self.seccomp;
        let files = |f: &SnapshotFiles| SnapshotFilesConfig {
            state: f.state.clone(),
            memory: f.memory.clone(),
        };
        cfg.snapshot = spec.snapshot.as_ref().map(|s| match s {
            SnapshotUse::SaveTo(f) => SnapshotConfig {
                save_to: Some(files(f)),
                restore_from: None,
            },
            SnapshotUse::RestoreFrom(f) => SnapshotConfig {
                save_to: None,
                restore_from: Some(files(f)),
            },
        });
        Ok(cfg)
    }

    /// Writes `cfg` to [`Self::config_path`], readable by its owner only (it names every
    /// path of the pod).
    fn write_config(&self, cfg: &VmConfig) -> Result<PathBuf, HypervisorError> {
        let path = self.config_path();
        let json = cfg
            .to_json()
            .map_err(|e| invalid(format!("VM config: {e}")))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        // `mode` applies only when the file is created; a stale one keeps its own.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(json.as_bytes())?;
        file.write_all(b"\n")?;
        Ok(path)
    }

    async fn request(&self, req: Request) -> Result<Success, HypervisorError> {
        request(&self.api_socket(), req, CONTROL_TIMEOUT).await
    }
}

/// The guest's kernel command line for `spec`, built here only: the contract's base line,
/// `quiet` unless the console is kept, then the user's `kernel_params`. (The VMM appends
/// its device entries.)
pub fn kernel_cmdline(spec: &VmSpec) -> String {
    let mut cmdline = BASE_CMDLINE.to_string();
    if spec.console_log.is_none() {
        cmdline.push_str(" quiet");
    }
    let extra = spec.kernel_params.trim();
    if !extra.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

fn invalid(message: String) -> HypervisorError {
    HypervisorError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        message,
    ))
}

/// Sends `req` to a hyper-vmm control socket as one JSON line and parses the one reply
/// line. Everything from connect to reply must take less than `timeout`. The error names
/// the request and why it failed: connect, send, read, timeout, a malformed reply, or the
/// VMM's own message for `{"ok":false}`.
pub async fn request(
    socket: &Path,
    req: Request,
    timeout: Duration,
) -> Result<Success, HypervisorError> {
    let err = |message: String| HypervisorError::Control {
        path: socket.to_path_buf(),
        message: format!("{req}: {message}"),
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(req.to_line().as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        let n = BufReader::new(stream.take(MAX_REPLY_LINE))
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read reply: {e}"))?;
        if n == 0 {
            return Err("the VMM closed the connection without a reply".to_string());
        }
        Ok(line)
    };
    let line = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| err(format!("no reply within {timeout:?}")))?
        .map_err(err)?;
    let reply = Reply::from_line(&line)
        .map_err(|e| err(format!("malformed reply {:?}: {e}", line.trim())))?;
    reply
        .into_result()
        .map_err(|why| err(format!("VMM error: {why}")))
}

/// `dir`, mode 0700, whether it existed or not.
fn check_file(what: &'static str, path: &Path) -> Result<(), HypervisorError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(HypervisorError::MissingFile {
            what,
            path: path.to_path_buf(),
        })
    }
}

/// Resolves a bare binary name on PATH, the way a shell would.
pub(crate) fn resolve_binary(binary: &Path) -> Result<PathBuf, HypervisorError> {
    if binary.components().count() > 1 {
        return if binary.is_file() {
            Ok(binary.to_path_buf())
        } else {
            Err(HypervisorError::BinaryNotFound(binary.to_path_buf()))
        };
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
        .ok_or_else(|| HypervisorError::BinaryNotFound(binary.to_path_buf()))
}

/// Most taps one VM takes (one per pod interface).
pub const MAX_TAPS: usize = 16;

/// In the child: makes `fds` its fds `first`, `first + 1`, ... (without close-on-exec).
/// Each is first moved above the target range, so no source is overwritten before use.
/// No allocation: this runs between fork and exec.
fn inherit_at(fds: &[RawFd], first: RawFd) -> std::io::Result<()> {
    let mut moved = [0; MAX_TAPS];
    let above = first + fds.len() as RawFd;
    for (slot, &fd) in moved.iter_mut().zip(fds) {
        // SAFETY: fcntl on an fd the parent passed, no memory involved.
        *slot = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
        if *slot < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (target, &high) in (first..).zip(&moved[..fds.len()]) {
        // SAFETY: as above; dup2 clears close-on-exec on the target.
        if unsafe { libc::dup2(high, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[async_trait]
impl Hypervisor for HyperVmm {
    async fn start(&mut self, spec: &VmSpec) -> Result<(), HypervisorError> {
        let binary = resolve_binary(&self.binary)?;
        check_file("kernel", &spec.kernel)?;
        check_file("image", &spec.initrd)?;
        std::fs::create_dir_all(&self.run_dir)?;
        make_private_dir(&self.run_dir.join(SOCKET_DIR))?;
        if self.jail {
            make_private_dir(&self.jail_root())?;
        }
        let config = self.write_config(&self.vm_config(spec)?)?;
        let log = create_private_file(&self.run_dir.join("vmm.log"))?;
        // std, not tokio: the shim's SIGCHLD handler reaps every child and reports exits
        // through containerd-shim's monitor, which the sandbox watches.
        let taps: Vec<RawFd> = spec.nets.iter().map(|n| n.tap_fd).collect();
        if taps.len() > MAX_TAPS {
            return Err(invalid(format!(
                "{} network interfaces, more than the {MAX_TAPS} a VM takes",
                taps.len()
            )));
        }
        let mut cmd = Command::new(&binary);
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !taps.is_empty() {
            // SAFETY: between fork and exec this only calls fcntl and dup2, which are
            // async-signal-safe, on fds the parent keeps open until spawn returns.
            unsafe { cmd.pre_exec(move || inherit_at(&taps, FIRST_TAP_FD)) };
        }
        let child = cmd.spawn().map_err(|cause| HypervisorError::Spawn {
            binary: binary.clone(),
            cause,
        })?;
        tracing::info!(pid = child.id(), "started {}", binary.display());
        // Opened at once: the process cannot have been reaped, so this is the VMM (an
        // ESRCH here means it has already exited, and there is nothing to stop).
        self.process = Process::open(child.id()).ok();
        Ok(())
    }

    async fn stop(&mut self, how: Stop) -> Result<(), HypervisorError> {
        let Some(vmm) = self.process.take() else {
            return Ok(());
        };
        let (req, wait) = match how {
            Stop::Graceful { grace } => (Request::Stop, grace),
            Stop::PowerOff => (Request::PowerOff, POWER_OFF_WAIT),
        };
        let exited = self.request(req).await.is_ok()
            && tokio::time::timeout(wait, vmm.exited()).await.is_ok();
        if !exited {
            tracing::warn!(
                pid = vmm.pid,
                "the VMM had not exited {wait:?} after {req}: killing it"
            );
            // Fails only when the VMM has exited meanwhile.
            let _ = vmm.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = tokio::time::timeout(POWER_OFF_WAIT, vmm.exited()).await;
        }
        Ok(())
    }

    async fn pause(&self) -> Result<(), HypervisorError> {
        self.request(Request::Pause).await.map(|_| ())
    }

    async fn resume(&self) -> Result<(), HypervisorError> {
        self.request(Request::Resume).await.map(|_| ())
    }

    async fn snapshot(&self) -> Result<(), HypervisorError> {
        // Writing guest memory takes longer than any other request.
        request(&self.api_socket(), Request::Snapshot, SNAPSHOT_TIMEOUT)
            .await
            .map(|_| ())
    }

    fn vsock_uds(&self) -> PathBuf {
        vsock_uds_in(&self.run_dir)
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    async fn metrics(&self, timeout: Duration) -> Result<VmmMetrics, HypervisorError> {
        let success = request(&self.api_socket(), Request::Metrics, timeout).await?;
        success.metrics.ok_or_else(|| HypervisorError::Control {
            path: self.api_socket(),
            message: "metrics: the reply carries no metrics".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Disk, process_alive};
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd".into(),
            kernel_params: "agent.log=debug".into(),
            vcpus: 2,
            memory_mib: 512,
            disks: vec![Disk {
                path: "/s/rootfs.img".into(),
                read_only: false,
                serial: "c1-rootfs".into(),
            }],
            shares: vec![super::super::SharedDir {
                tag: "hypershare".into(),
                path: "/run/hyper/p1/share".into(),
                cache: "auto".into(),
            }],
            console_log: None,
            cgroup: Some("/sys/fs/cgroup/default/p1".into()),
            nets: vec![],
            snapshot: None,
        }
    }

    #[test]
    fn the_vm_config_carries_the_spec() {
        let vmm = HyperVmm::new("hyper-vmm".into(), "/run/hyper/p1".into());
        let got = vmm.vm_config(&spec()).unwrap();
        let want = VmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: Some(format!("{BASE_CMDLINE} quiet agent.log=debug")),
            vcpus: 2,
            memory_mib: 512,
            serial: SerialOutputConfig::None,
            vsock: Some(VsockConfig {
                uds: "/run/hyper/p1/vm/vsock.sock".into(),
                cid: 3,
            }),
            block: vec![BlockConfig {
                path: "/s/rootfs.img".into(),
                read_only: false,
                serial: Some("c1-rootfs".into()),
            }],
            net: vec![],
            fs: vec![FsConfig {
                tag: "hypershare".into(),
                shared_dir: "/run/hyper/p1/share".into(),
                cache: FsCacheMode::Auto,
                writeback: false,
                xattr: true,
            }],
            rng: true,
            api_socket: Some("/run/hyper/p1/vm/vmm.sock".into()),
            stop_timeout_ms: hyper_vmm_api::DEFAULT_STOP_TIMEOUT_MS,
            jail: Some(JailConfig {
                root: "/run/hyper/p1/root".into(),
                cgroup: Some("/sys/fs/cgroup/default/p1".into()),
            }),
            // Checked by its own tests.
            seccomp: got.seccomp,
            snapshot: None,
        };
        assert_eq!(got, want);
        // What the VMM reads back is what was built.
        assert_eq!(VmConfig::from_json(&got.to_json().unwrap()).unwrap(), want);

        let mut s = spec();
        s.console_log = Some("/r/console.log".into());
        let got = vmm.vm_config(&s).unwrap();
        assert_eq!(
            got.serial,
            SerialOutputConfig::File("/r/console.log".into())
        );
        let unjailed = HyperVmm::new("hyper-vmm".into(), "/run/hyper/p1".into()).jailed(false);
        assert_eq!(unjailed.vm_config(&spec()).unwrap().jail, None);
        assert!(got.seccomp, "seccomp is on by default");
        let open = HyperVmm::new("hyper-vmm".into(), "/run/hyper/p1".into()).with_seccomp(false);
        assert!(!open.vm_config(&spec()).unwrap().seccomp);

        let files = SnapshotFiles {
            state: "/t/state.json".into(),
            memory: "/t/memory".into(),
        };
        let want = SnapshotFilesConfig {
            state: "/t/state.json".into(),
            memory: "/t/memory".into(),
        };
        for (name, use_, save_to, restore_from) in [
            (
                "save",
                SnapshotUse::SaveTo(files.clone()),
                Some(&want),
                None,
            ),
            (
                "restore",
                SnapshotUse::RestoreFrom(files),
                None,
                Some(&want),
            ),
        ] {
            let mut s = spec();
            s.snapshot = Some(use_);
            let got = vmm.vm_config(&s).unwrap().snapshot.unwrap();
            assert_eq!(got.save_to.as_ref(), save_to, "{name}");
            assert_eq!(got.restore_from.as_ref(), restore_from, "{name}");
        }
    }

    #[test]
    fn the_kernel_command_line_is_the_base_then_quiet_then_the_users() {
        let cases = [
            (
                None,
                "agent.log=debug",
                format!("{BASE_CMDLINE} quiet agent.log=debug"),
            ),
            (None, "", format!("{BASE_CMDLINE} quiet")),
            (None, "  a=1 b  ", format!("{BASE_CMDLINE} quiet a=1 b")),
            (Some("/r/console.log"), "a=1", format!("{BASE_CMDLINE} a=1")),
            (Some("/r/console.log"), "", BASE_CMDLINE.to_string()),
        ];
        for (console, params, want) in cases {
            let mut s = spec();
            s.console_log = console.map(PathBuf::from);
            s.kernel_params = params.into();
            assert_eq!(
                kernel_cmdline(&s),
                want,
                "console {console:?}, params {params:?}"
            );
        }
    }

    #[test]
    fn specs_the_vmm_cannot_take_are_named() {
        let vmm = HyperVmm::new("hyper-vmm".into(), "/r".into());
        type Change = fn(&mut VmSpec);
        let cases: [(Change, &str); 3] = [
            (|s| s.vcpus = 0, "vcpus 0 is not in 1..=32"),
            (|s| s.vcpus = 300, "vcpus 300 is not in 1..=32"),
            (
                |s| s.shares[0].cache = "sometimes".into(),
                "share \"hypershare\": cache mode \"sometimes\"",
            ),
        ];
        for (change, want) in cases {
            let mut s = spec();
            change(&mut s);
            let err = vmm.vm_config(&s).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[tokio::test]
    async fn start_writes_the_config_and_passes_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("p1");
        let (kernel, initrd) = (dir.path().join("vmlinux"), dir.path().join("initrd"));
        std::fs::write(&kernel, b"k").unwrap();
        std::fs::write(&initrd, b"i").unwrap();
        let fake = dir.path().join("fake-vmm");
        std::fs::write(
            &fake,
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$2\")/args\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A stale config from an earlier VM, readable by all: rewritten, and private.
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::write(run_dir.join("vm.json"), "stale").unwrap();
        std::fs::set_permissions(
            run_dir.join("vm.json"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();

        let mut vmm = HyperVmm::new(fake, run_dir.clone());
        let mut s = spec();
        s.kernel = kernel;
        s.initrd = initrd;
        vmm.start(&s).await.unwrap();
        let fake_vmm = vmm.process.take().expect("the fake VMM's pidfd");
        tokio::time::timeout(Duration::from_secs(10), fake_vmm.exited())
            .await
            .expect("the fake VMM exits")
            .unwrap();

        let config = run_dir.join("vm.json");
        let args = std::fs::read_to_string(run_dir.join("args")).unwrap();
        assert_eq!(args, format!("--config\n{}\n", config.display()));
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let root = std::fs::metadata(run_dir.join("root")).unwrap();
        assert!(root.is_dir() && root.permissions().mode() & 0o777 == 0o700);
        let text = std::fs::read_to_string(&config).unwrap();
        assert_eq!(
            VmConfig::from_json(&text).unwrap(),
            vmm.vm_config(&s).unwrap()
        );
    }

    #[tokio::test]
    async fn missing_binary_and_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut vmm = HyperVmm::new("/nonexistent/hyper-vmm".into(), dir.path().into());
        let err = vmm.start(&spec()).await.unwrap_err().to_string();
        assert!(err.contains("/nonexistent/hyper-vmm"), "{err}");

        let mut vmm = HyperVmm::new("true".into(), dir.path().into());
        let err = vmm.start(&spec()).await.unwrap_err().to_string();
        assert!(
            err.contains("kernel") && err.contains("/k/vmlinux"),
            "{err}"
        );
    }

    /// What the fake VMM does with the one request line it reads.
    enum Answer {
        Line(&'static str),
        Close,
        Silence,
    }

    /// A control socket at `path` that takes one connection, checks its request line and
    /// answers as told.
    fn fake_vmm(path: &Path, want: &'static str, answer: Answer) {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            assert_eq!(line, want);
            match answer {
                Answer::Line(l) => r.into_inner().write_all(l.as_bytes()).await.unwrap(),
                Answer::Close => drop(r),
                Answer::Silence => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(r);
                }
            }
        });
    }

    #[tokio::test]
    async fn stop_kills_a_vmm_whose_control_socket_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("p1");
        make_private_dir(&run_dir.join(SOCKET_DIR)).unwrap();
        let mut vmm = HyperVmm::new("hyper-vmm".into(), run_dir);
        // Takes the stop request and never answers (a wedged event loop).
        fake_vmm(&vmm.api_socket(), "{\"cmd\":\"stop\"}\n", Answer::Silence);
        let mut child = Command::new("sleep")
            .arg("300")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        vmm.process = Some(Process::open(pid).unwrap());
        let t0 = std::time::Instant::now();
        vmm.stop(Stop::Graceful {
            grace: Duration::from_millis(100),
        })
        .await
        .unwrap();
        let took = t0.elapsed();
        assert!(
            took < CONTROL_TIMEOUT + Duration::from_secs(2),
            "stop took {took:?}"
        );
        // `stop` returns once the VMM has exited (a zombie, until it is reaped here).
        assert!(!process_alive(pid), "the VMM survived its stop");
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn control_sends_one_json_line_and_checks_the_answer() {
        use hyper_vmm_api::VmState;
        let dir = tempfile::tempdir().unwrap();
        let short = Duration::from_millis(200);
        /// Ok(the state the reply carries) or Err(parts of the error message).
        type Want = Result<Option<VmState>, &'static [&'static str]>;
        // (request, the line the VMM must get, its answer, what `request` returns)
        let cases: Vec<(Request, &str, Answer, Want)> = vec![
            (
                Request::Ping,
                "{\"cmd\":\"ping\"}\n",
                Answer::Line("{\"ok\":true,\"state\":\"running\"}\n"),
                Ok(Some(VmState::Running)),
            ),
            (
                Request::Pause,
                "{\"cmd\":\"pause\"}\n",
                Answer::Line("{\"ok\": true}\n"),
                Ok(None),
            ),
            (
                Request::Resume,
                "{\"cmd\":\"resume\"}\n",
                Answer::Line("{\"ok\":false,\"error\":\"VM is not running\"}\n"),
                Err(&["resume: VMM error: VM is not running"]),
            ),
            (
                Request::Stop,
                "{\"cmd\":\"stop\"}\n",
                Answer::Line("yes\n"),
                Err(&["stop: malformed reply \"yes\""]),
            ),
            (
                Request::Pause,
                "{\"cmd\":\"pause\"}\n",
                Answer::Line("{\"ok\":false}\n"),
                Err(&["pause: malformed reply", "no \"error\""]),
            ),
            (
                Request::Metrics,
                "{\"cmd\":\"metrics\"}\n",
                Answer::Close,
                Err(&["metrics: the VMM closed the connection without a reply"]),
            ),
            (
                Request::Ping,
                "{\"cmd\":\"ping\"}\n",
                Answer::Silence,
                Err(&["ping: no reply within 200ms"]),
            ),
        ];
        for (i, (req, want_line, answer, want)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("api{i}.sock"));
            fake_vmm(&path, want_line, answer);
            let got = request(&path, req, short).await;
            match (got, want) {
                (Ok(s), Ok(state)) => assert_eq!(s.state, state, "case {i}"),
                (Err(e), Err(parts)) => {
                    let e = e.to_string();
                    assert!(e.contains(&format!("api{i}.sock")), "case {i}: {e}");
                    for p in parts {
                        assert!(e.contains(p), "case {i}: {p:?} not in {e}");
                    }
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }

        let err = request(&dir.path().join("gone.sock"), Request::Stop, short)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gone.sock") && err.contains("stop: connect"),
            "{err}"
        );
    }

    #[test]
    fn liveness_sees_zombies_as_dead() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // Not reaped yet: a zombie once it exits.
        let start = std::time::Instant::now();
        while process_alive(pid.as_raw() as u32) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!process_alive(pid.as_raw() as u32));
        child.wait().unwrap();
        assert!(!process_alive(pid.as_raw() as u32));
    }
}
