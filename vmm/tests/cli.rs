//! The `hyper-vmm` binary end to end: clear errors for bad input, and a hand-made ELF
//! "kernel" booted through the real builder path (ELF load, zero page, command line,
//! long-mode entry) that prints and resets.

use std::path::Path;
use std::process::{Command, Output};

mod common;

use common::{kvm_usable, tiny_elf};
use hyper_vmm::api::{Reply, VmState};
use hyper_vmm::config::{BlockConfig, SerialOutputConfig, VmConfig, VsockConfig};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyper-vmm"))
        .args(args)
        .env("HYPER_VMM_LOG", "info")
        .output()
        .expect("run hyper-vmm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Prints "OK", then the first byte of the kernel command line found through the zero
/// page in %rsi (boot_params.hdr.cmd_line_ptr at 0x228), then resets via the i8042.
const BOOT_CODE: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'O', 0xee, // mov al,'O'; out dx,al
    0xb0, b'K', 0xee, // mov al,'K'; out dx,al
    0x8b, 0x86, 0x28, 0x02, 0x00, 0x00, // mov eax, [rsi+0x228]
    0x8a, 0x00, // mov al, [rax]
    0xee, // out dx, al
    0xb0, 0xfe, 0xe6, 0x64, // mov al,0xfe; out 0x64,al
    0xeb, 0xfe, // jmp $
];

#[test]
fn missing_kernel_is_a_clear_error() {
    let o = vmm(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot open kernel /nonexistent/vmlinux"),
        "{}",
        stderr(&o)
    );
    let o = vmm(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no kernel given"), "{}", stderr(&o));
}

#[test]
fn bad_options_are_clear_errors() {
    let o = vmm(&["--kernel", "/k", "--memory-mib", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("memory must be at least"),
        "{}",
        stderr(&o)
    );
    let o = vmm(&["--kernel", "/k", "--block", "path=/x,colour=red"]);
    assert!(stderr(&o).contains("unknown key"), "{}", stderr(&o));
    let o = vmm(&["--kernel", "/k", "--net", "mac=02:00:00:00:00:01"]);
    assert!(
        stderr(&o).contains("exactly one of tap=NAME or fd=N"),
        "{}",
        stderr(&o)
    );
    // A net fd the parent did not pass: refused, not confused with one of the VMM's own.
    let o = vmm(&["--kernel", "/k", "--net", "fd=77"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("net0: fd=77 is not open in hyper-vmm"),
        "{}",
        stderr(&o)
    );
    let o = vmm(&["--kernel", "/k", "--vsock-uds", "/tmp/x.sock"]);
    assert_ne!(o.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, r#"{"kernel":"/k","colour":"red"}"#).unwrap();
    let o = vmm(&["--config", cfg.to_str().unwrap()]);
    assert!(stderr(&o).contains("unknown field"), "{}", stderr(&o));
}

#[test]
fn not_an_elf_kernel_is_a_clear_error() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("bzImage");
    std::fs::write(&k, b"MZ this is not an ELF").unwrap();
    let o = vmm(&["--kernel", k.to_str().unwrap(), "--serial", "none"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot load kernel"), "{}", stderr(&o));
}

fn boot_tiny(dir: &Path, extra: &[&str]) -> (Output, String) {
    let k = dir.join("vmlinux");
    std::fs::write(&k, tiny_elf(BOOT_CODE)).unwrap();
    let console = dir.join("console.log");
    let mut args = vec![
        "--kernel",
        k.to_str().unwrap(),
        "--serial",
        console.to_str().unwrap(),
        "--memory-mib",
        "64",
    ];
    args.extend_from_slice(extra);
    let o = vmm(&args);
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    (o, text)
}

#[test]
fn tiny_elf_kernel_boots_in_long_mode_and_resets() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (o, console) = boot_tiny(dir.path(), &["--cmdline", "Zebra=1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(console, "OKZ");
    assert!(stderr(&o).contains("reset"), "{}", stderr(&o));

    // Default command line, every device, and the same through a JSON config file.
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let uds = dir.path().join("v.sock");
    let cfg = dir.path().join("vm.json");
    // Written the way the shim writes it: a VmConfig from the contract crate.
    let mut vm = VmConfig::new(dir.path().join("vmlinux"));
    vm.serial = SerialOutputConfig::File(dir.path().join("console2.log"));
    vm.vcpus = 2;
    vm.memory_mib = 64;
    vm.vsock = Some(VsockConfig {
        uds: uds.clone(),
        cid: 3,
    });
    vm.block.push(BlockConfig {
        path: img,
        read_only: true,
        serial: Some("d0".into()),
    });
    vm.rng = true;
    std::fs::write(&cfg, vm.to_json().unwrap()).unwrap();
    let o = vmm(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let console = std::fs::read_to_string(dir.path().join("console2.log")).unwrap();
    // The default command line starts with "console=ttyS0".
    assert_eq!(console, "OKc");
    assert!(!uds.exists(), "the vsock socket is removed on exit");
}

#[test]
fn sigterm_stops_cleanly_and_removes_sockets() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("vmlinux");
    std::fs::write(&k, tiny_elf(&[0xeb, 0xfe])).unwrap(); // jmp $
    let api = dir.path().join("api.sock");
    let uds = dir.path().join("v.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hyper-vmm"))
        .args(["--kernel", k.to_str().unwrap(), "--serial", "none"])
        .args(["--api-socket", api.to_str().unwrap()])
        .args(["--vsock-uds", uds.to_str().unwrap(), "--vsock-cid", "3"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !(api.exists() && uds.exists()) {
        assert!(t.elapsed().as_secs() < 10, "sockets never appeared");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!api.exists() && !uds.exists(), "sockets removed");
}

/// Each thread of process `pid`: (name, seccomp mode, number of filters).
fn thread_filters(pid: u32) -> Vec<(String, u32, u32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let field = |status: &str, key: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|s| {
            (
                field(&s, "Name:"),
                field(&s, "Seccomp:").parse().unwrap_or(0),
                field(&s, "Seccomp_filters:").parse().unwrap_or(0),
            )
        })
        .collect()
}

/// A VMM child that is killed if the test fails before it ends.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Asks the control socket `line`; returns the reply.
fn ask(api: &Path, line: &str) -> Reply {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(api).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    Reply::from_line(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
}

/// With seccomp on (the default) every thread of a VM with every device holds exactly
/// one filter, its own kind's (none inherited and stacked), and the VM runs to its normal
/// end: control requests answered, a clean stop, no SIGSYS.
#[test]
fn every_thread_runs_under_its_own_seccomp_filter_and_the_vm_ends_normally() {
    use std::os::unix::process::ExitStatusExt;
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("vmlinux");
    std::fs::write(&k, tiny_elf(&[0xeb, 0xfe])).unwrap(); // jmp $
    let api = dir.path().join("api.sock");
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 4096]).unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hyper-vmm"))
        .args(["--kernel", k.to_str().unwrap(), "--serial", "none"])
        .args(["--vcpus", "2", "--rng"])
        .args(["--api-socket", api.to_str().unwrap()])
        .args(["--vsock-uds", dir.path().join("v.sock").to_str().unwrap()])
        .args(["--vsock-cid", "3"])
        .args(["--block", &format!("path={}", img.display())])
        .args(["--fs", &format!("tag=t,path={}", share.display())])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut child = Running(Some(child));
    // The main thread locks down last, once the vCPUs run.
    let t = std::time::Instant::now();
    let threads = loop {
        let threads = thread_filters(pid);
        if threads
            .iter()
            .any(|(name, mode, _)| name == "hyper-vmm" && *mode == 2)
        {
            break threads;
        }
        assert!(t.elapsed().as_secs() < 10, "never locked down: {threads:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // KVM's own kernel worker (kvm-nx-lpage-recovery) is listed too; it never runs ours.
    let threads: Vec<_> = threads
        .into_iter()
        .filter(|(name, _, _)| !name.starts_with("kvm-"))
        .collect();
    let mut names: Vec<_> = threads.iter().map(|(n, _, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["hyper-fs0", "hyper-vmm", "vcpu0", "vcpu1"],
        "{threads:?}"
    );
    for (name, mode, filters) in &threads {
        assert_eq!((*mode, *filters), (2, 1), "{name}: seccomp mode, filters");
    }
    assert_eq!(ask(&api, "ping").state(), Some(VmState::Running));
    let metrics = ask(&api, "metrics").into_result().unwrap().metrics;
    assert!(metrics.is_some());
    assert_eq!(ask(&api, "pause"), Reply::done());
    assert_eq!(ask(&api, "ping").state(), Some(VmState::Paused));
    assert_eq!(ask(&api, "resume"), Reply::done());
    assert_eq!(ask(&api, "stop"), Reply::done());
    let out = child.0.take().unwrap().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "killed: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn no_seccomp_runs_unfiltered_and_says_so() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (o, console) = boot_tiny(dir.path(), &["--no-seccomp", "--cmdline", "x"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(console, "OKx");
    assert!(stderr(&o).contains("seccomp is off"), "{}", stderr(&o));
}

/// Waits until `path` holds at least one byte; returns its contents.
fn console_output(path: &Path) -> Vec<u8> {
    let t = std::time::Instant::now();
    loop {
        let bytes = std::fs::read(path).unwrap_or_default();
        if !bytes.is_empty() {
            return bytes;
        }
        assert!(t.elapsed().as_secs() < 10, "no console output in {path:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A VM with vsock, virtio-fs (not mounted) and rng, seccomp on, saved by a `snapshot`
/// request and restored by a second hyper-vmm with other sockets and another share: the
/// restored guest prints exactly the byte after the last one the saved guest printed.
#[test]
fn a_snapshot_request_saves_a_vm_that_another_vmm_restores() {
    use hyper_vmm::config::{FsCacheMode, FsConfig, SnapshotConfig, SnapshotFilesConfig};
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("vmlinux");
    // mov dx, 0x3f8; loop: out dx, al; inc al; jmp loop
    std::fs::write(
        &k,
        tiny_elf(&[0x66, 0xba, 0xf8, 0x03, 0xee, 0xfe, 0xc0, 0xeb, 0xfb]),
    )
    .unwrap();
    let files = SnapshotFilesConfig {
        state: dir.path().join("state.json"),
        memory: dir.path().join("memory"),
    };
    let config = |name: &str, snapshot: SnapshotConfig| {
        let share = dir.path().join(format!("share-{name}"));
        std::fs::create_dir(&share).unwrap();
        let mut c = VmConfig::new(k.clone());
        c.memory_mib = 64;
        c.serial = SerialOutputConfig::File(dir.path().join(format!("{name}.console")));
        c.api_socket = Some(dir.path().join(format!("{name}.sock")));
        c.vsock = Some(VsockConfig {
            uds: dir.path().join(format!("{name}.vsock")),
            cid: 3,
        });
        c.fs = vec![FsConfig {
            tag: "share".into(),
            shared_dir: share,
            cache: FsCacheMode::None,
            writeback: false,
            xattr: false,
        }];
        c.rng = true;
        c.snapshot = Some(snapshot);
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, c.to_json().unwrap()).unwrap();
        path
    };
    let spawn = |cfg: &Path| {
        Running(Some(
            Command::new(env!("CARGO_BIN_EXE_hyper-vmm"))
                .arg("--config")
                .arg(cfg)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        ))
    };
    let wait_api = |api: &Path| {
        let t = std::time::Instant::now();
        while !api.exists() {
            assert!(t.elapsed().as_secs() < 10, "no control socket {api:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    let finish = |mut vm: Running| {
        let out = vm.0.take().unwrap().wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        stderr
    };

    let saved_cfg = config(
        "a",
        SnapshotConfig {
            save_to: Some(files.clone()),
            restore_from: None,
        },
    );
    let a = spawn(&saved_cfg);
    let api_a = dir.path().join("a.sock");
    wait_api(&api_a);
    console_output(&dir.path().join("a.console"));
    assert_eq!(ask(&api_a, "snapshot"), Reply::done());
    assert_eq!(ask(&api_a, "ping").state(), Some(VmState::Paused));
    assert_eq!(ask(&api_a, "poweroff"), Reply::done());
    finish(a);
    let last = *std::fs::read(dir.path().join("a.console"))
        .unwrap()
        .last()
        .unwrap();

    let restored_cfg = config(
        "b",
        SnapshotConfig {
            save_to: None,
            restore_from: Some(files.clone()),
        },
    );
    let b = spawn(&restored_cfg);
    let api_b = dir.path().join("b.sock");
    wait_api(&api_b);
    let printed = console_output(&dir.path().join("b.console"));
    assert_eq!(
        printed[0],
        last.wrapping_add(1),
        "the restored guest's first byte"
    );
    assert_eq!(ask(&api_b, "ping").state(), Some(VmState::Running));
    // This VMM has no files to save to.
    let err = ask(&api_b, "snapshot").into_result().unwrap_err();
    assert!(err.contains("no snapshot.save_to"), "{err}");
    assert_eq!(ask(&api_b, "poweroff"), Reply::done());
    finish(b);

    // A restore whose config asks for another VM shape is refused, by name.
    let mut wrong: VmConfig =
        VmConfig::from_json(&std::fs::read_to_string(&restored_cfg).unwrap()).unwrap();
    wrong.memory_mib = 128;
    wrong.api_socket = None;
    wrong.vsock = None;
    wrong.fs.clear();
    let wrong_path = dir.path().join("wrong.json");
    std::fs::write(&wrong_path, wrong.to_json().unwrap()).unwrap();
    let o = vmm(&["--config", wrong_path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("a VM of 1 vCPUs and 64 MiB; the config asks for 1 and 128 MiB"),
        "{}",
        stderr(&o)
    );
}
