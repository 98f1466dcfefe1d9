//! `hyper-vmm` as a separate process per pod: a VM escape or a VMM crash must not take
//! the shim down. Configured with command-line flags, controlled over its API socket.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{Hypervisor, HypervisorError, VmSpec, process_alive};

/// Guest CID of every VM: each VM has its own vsock device, so they need not differ.
pub const GUEST_CID: u32 = 3;

pub struct HyperVmm {
    binary: PathBuf,
    /// Per-VM directory for the sockets (and the console log, if kept).
    run_dir: PathBuf,
    child: Option<Child>,
}

impl HyperVmm {
    pub fn new(binary: PathBuf, run_dir: PathBuf) -> Self {
        Self {
            binary,
            run_dir,
            child: None,
        }
    }

    pub fn api_socket(&self) -> PathBuf {
        self.run_dir.join("vmm.sock")
    }

    /// The command line for `spec`; separate from `start` so it can be tested.
    pub fn command_args(&self, spec: &VmSpec) -> Vec<String> {
        let mut args = vec![
            "--kernel".into(),
            spec.kernel.display().to_string(),
            "--initrd".into(),
            spec.initrd.display().to_string(),
            "--vcpus".into(),
            spec.vcpus.to_string(),
            "--memory-mib".into(),
            spec.memory_mib.to_string(),
            "--vsock-uds".into(),
            self.vsock_uds().display().to_string(),
            "--vsock-cid".into(),
            GUEST_CID.to_string(),
            "--api-socket".into(),
            self.api_socket().display().to_string(),
            "--rng".into(),
            "--serial".into(),
            spec.console_log
                .as_ref()
                .map_or_else(|| "none".to_string(), |p| p.display().to_string()),
        ];
        let quiet = if spec.console_log.is_some() {
            ""
        } else {
            " quiet"
        };
        args.push("--cmdline".into());
        args.push(
            format!(
                "console=ttyS0 reboot=k panic=-1{quiet} i8042.noaux i8042.nomux i8042.nopnp \
             i8042.dumbkbd 8250.nr_uarts=1 {}",
                spec.kernel_params
            )
            .trim_end()
            .to_string(),
        );
        for f in &spec.shares {
            args.push("--fs".into());
            args.push(format!(
                "tag={},path={},cache={}",
                f.tag,
                f.path.display(),
                f.cache
            ));
        }
        for d in &spec.disks {
            args.push("--block".into());
            args.push(format!(
                "path={},ro={},serial={}",
                d.path.display(),
                d.read_only,
                d.serial
            ));
        }
        args
    }

    async fn control(&self, command: &str) -> Result<String, HypervisorError> {
        control(&self.api_socket(), command).await
    }
}

/// Sends `command` (ping, pause, resume, stop, metrics) to a hyper-vmm control socket and
/// returns its JSON answer line; an answer without `"ok":true` is an error.
pub async fn control(socket: &Path, command: &str) -> Result<String, HypervisorError> {
    let err = |message: String| HypervisorError::Control {
        path: socket.to_path_buf(),
        message,
    };
    let request = format!("{{\"cmd\":\"{command}\"}}\n");
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|e| err(format!("connect: {e}")))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| err(format!("send {command}: {e}")))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(|e| err(format!("read answer to {command}: {e}")))?;
    if !line.replace(' ', "").contains("\"ok\":true") {
        return Err(err(format!("{command} failed: {}", line.trim())));
    }
    Ok(line)
}

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
fn resolve_binary(binary: &Path) -> Result<PathBuf, HypervisorError> {
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

#[async_trait]
impl Hypervisor for HyperVmm {
    async fn start(&mut self, spec: &VmSpec) -> Result<(), HypervisorError> {
        let binary = resolve_binary(&self.binary)?;
        check_file("kernel", &spec.kernel)?;
        check_file("image", &spec.initrd)?;
        std::fs::create_dir_all(&self.run_dir)?;
        let log = std::fs::File::create(self.run_dir.join("vmm.log"))?;
        // std, not tokio: the shim's SIGCHLD handler reaps every child and reports exits
        // through containerd-shim's monitor, which the sandbox watches.
        let child = Command::new(&binary)
            .args(self.command_args(spec))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|cause| HypervisorError::Spawn {
                binary: binary.clone(),
                cause,
            })?;
        tracing::info!(pid = child.id(), "started {}", binary.display());
        self.child = Some(child);
        Ok(())
    }

    async fn stop(&mut self, grace: Duration) -> Result<(), HypervisorError> {
        let Some(child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        if self.control("stop").await.is_ok() {
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline && process_alive(pid.as_raw() as u32) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if process_alive(pid.as_raw() as u32) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        Ok(())
    }

    async fn pause(&self) -> Result<(), HypervisorError> {
        self.control("pause").await.map(|_| ())
    }

    async fn resume(&self) -> Result<(), HypervisorError> {
        self.control("resume").await.map(|_| ())
    }

    fn vsock_uds(&self) -> PathBuf {
        self.run_dir.join("vsock.sock")
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Disk;
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
        }
    }

    #[test]
    fn command_line_carries_the_spec() {
        let vmm = HyperVmm::new("hyper-vmm".into(), "/run/hyper/p1".into());
        let args = vmm.command_args(&spec());
        let joined = args.join(" ");
        for want in [
            "--kernel /k/vmlinux",
            "--initrd /k/initrd",
            "--vcpus 2",
            "--memory-mib 512",
            "--vsock-uds /run/hyper/p1/vsock.sock",
            "--api-socket /run/hyper/p1/vmm.sock",
            "--block path=/s/rootfs.img,ro=false,serial=c1-rootfs",
            "--fs tag=hypershare,path=/run/hyper/p1/share,cache=auto",
            "--serial none",
        ] {
            assert!(joined.contains(want), "{want} missing from {joined}");
        }
        let cmdline = &args[args.iter().position(|a| a == "--cmdline").unwrap() + 1];
        assert!(cmdline.contains(" quiet "), "{cmdline}");
        assert!(cmdline.ends_with("agent.log=debug"), "{cmdline}");
    }

    #[test]
    fn a_console_log_turns_quiet_off() {
        let vmm = HyperVmm::new("hyper-vmm".into(), "/r".into());
        let mut s = spec();
        s.console_log = Some("/r/console.log".into());
        let args = vmm.command_args(&s);
        assert!(args.join(" ").contains("--serial /r/console.log"));
        assert!(!args.join(" ").contains("quiet"));
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

    #[tokio::test]
    async fn control_sends_one_json_line_and_checks_the_answer() {
        use tokio::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            for answer in [
                "{\"ok\":true,\"state\":\"running\"}\n",
                "{\"ok\":false,\"error\":\"no\"}\n",
            ] {
                let (s, _) = listener.accept().await.unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                assert_eq!(line, "{\"cmd\":\"ping\"}\n");
                r.into_inner().write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let ok = control(&path, "ping").await.unwrap();
        assert!(ok.contains("running"), "{ok}");
        let err = control(&path, "ping").await.unwrap_err().to_string();
        assert!(err.contains("ping failed") && err.contains("no"), "{err}");
        let err = control(&dir.path().join("gone.sock"), "stop")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("gone.sock"), "{err}");
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
