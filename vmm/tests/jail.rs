//! The VMM's jail end to end: a tiny guest that spins runs in a jailed hyper-vmm while the
//! test looks at the jailed process from the host (namespaces, its root, its fds, a bind
//! added under the share later), then stops it every way the shim does. Needs root and
//! /dev/kvm; skipped (not failed) without them.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{kvm_usable, tiny_elf};
use hyper_vmm::api::{Reply, Request, VmState};
use hyper_vmm::config::{
    BlockConfig, FsCacheMode, FsConfig, NetConfig, SerialOutputConfig, SnapshotConfig,
    SnapshotFilesConfig, VmConfig, VsockConfig,
};
use hyper_vmm_api::JailConfig;

/// The fd number the net device's socket is handed in as.
const NET_FD: i32 = 11;
/// An fd the jail must close: high enough that the VMM's own fds never reach it.
const LEAKED_FD: i32 = 900;
/// Where `launch` parks the fds it hands in before placing them.
const ABOVE_TARGETS: i32 = 1000;

fn usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: the jail needs root");
        return false;
    }
    kvm_usable()
}

const SPIN: &[u8] = &[0xeb, 0xfe]; // jmp $
const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]; // i8042 reset, then jmp $

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ready() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn umount(path: &Path) -> bool {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) == 0 }
}

fn set_propagation(path: &Path, flag: libc::c_ulong) {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path, no data.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            p.as_ptr(),
            std::ptr::null(),
            flag,
            std::ptr::null(),
        )
    };
    assert_eq!(
        r,
        0,
        "propagation of {path:?}: {}",
        std::io::Error::last_os_error()
    );
}

fn mount_tmpfs(on: &Path) {
    let p = CString::new(on.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            p.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=1m".as_ptr().cast(),
        )
    };
    assert_eq!(r, 0, "tmpfs on {on:?}: {}", std::io::Error::last_os_error());
}

fn bind(from: &Path, to: &Path) {
    let (f, t) = (
        CString::new(from.as_os_str().as_encoded_bytes()).unwrap(),
        CString::new(to.as_os_str().as_encoded_bytes()).unwrap(),
    );
    // SAFETY: NUL-terminated paths, no data.
    let r = unsafe {
        libc::mount(
            f.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(
        r,
        0,
        "bind {from:?} {to:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// How the share sits on the host.
#[derive(Clone, Copy, PartialEq)]
enum Share {
    /// A plain directory on a private mount; the host binds under it directly (the jail
    /// makes it a shared mount of its own).
    PlainDir,
    /// As the shim makes it, in the run directory: `mounts`, a shared mount the host binds
    /// into, and `shared`, a read-only slave copy of it that the VMM serves.
    SlaveOfMounts,
}

impl Share {
    /// The directory the VMM serves, under the test's dir.
    fn served(self) -> &'static str {
        match self {
            Share::PlainDir => "share",
            Share::SlaveOfMounts => "run/shared",
        }
    }
    /// Where the host binds things for the guest.
    fn host_side(self) -> &'static str {
        match self {
            Share::PlainDir => "share",
            Share::SlaveOfMounts => "run/mounts",
        }
    }
}

/// A jailed hyper-vmm and its files; dropping it kills what is left of the VMM and undoes
/// the mounts (the test's own and the share's bind on itself the jail made).
struct Jailed {
    child: Option<Child>,
    /// The jailed process once looked up, killed on drop too if a test failed before the
    /// outer one could take it down.
    inner: std::cell::Cell<Option<i32>>,
    dir: tempfile::TempDir,
    cfg: VmConfig,
    cgroup: Option<PathBuf>,
    share: Share,
    /// The test's end of the net device's socket pair.
    _net_peer: Option<UnixDatagram>,
}

impl Jailed {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn outer(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }
    fn api(&self) -> PathBuf {
        self.cfg.api_socket.clone().unwrap()
    }
    /// The jailed process: the outer one's only child.
    fn inner(&self) -> i32 {
        let outer = self.outer();
        let children = format!("/proc/{outer}/task/{outer}/children");
        let mut pid = None;
        wait_for("the jailed child", Duration::from_secs(10), || {
            pid = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok());
            pid.is_some()
        });
        self.inner.set(pid);
        pid.unwrap()
    }
    /// The outer process's exit status (within 10 s; a hang is a failure).
    fn wait(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let mut status = None;
        wait_for("hyper-vmm to exit", Duration::from_secs(10), || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        self.child = None;
        status.unwrap()
    }
}

impl Drop for Jailed {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let exe = |pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if let Some(pid) = self.inner.get()
            && std::thread::panicking()
            && exe(pid).as_deref() == Some(Path::new(env!("CARGO_BIN_EXE_hyper-vmm")))
        {
            // SAFETY: signalling the jailed VMM this test started, left by a failure.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for m in [
            "run/mounts/late",
            "run/shared/late",
            "run/shared",
            "run/mounts",
            "share/late",
            "share",
        ] {
            while umount(&self.path(m)) {}
        }
        if let Some(cg) = &self.cgroup {
            // The cgroup empties once the VMM's processes are gone.
            let t = Instant::now();
            while std::fs::remove_dir(cg).is_err() && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The cgroup v2 hierarchy's mount point, if there is one.
fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        right
            .starts_with("cgroup2 ")
            .then(|| PathBuf::from(mount_point))
    })
}

/// Starts a jailed VMM the way the shim would: sockets, console and jail root in one run
/// directory, a share, a read-only disk, a net fd; plus a leaked fd and a host file the
/// jail must not show.
fn start(code: &[u8], with_cgroup: bool, share: Share) -> Jailed {
    let mut vm = prepare(code, with_cgroup, share);
    vm.launch();
    vm
}

/// The files and config of [`start`], nothing running yet.
fn prepare(code: &[u8], with_cgroup: bool, share: Share) -> Jailed {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("vmlinux"), tiny_elf(code)).unwrap();
    std::fs::write(d.join("disk.img"), vec![0u8; 4096]).unwrap();
    std::fs::write(d.join("secret"), "host only").unwrap();
    let run = d.join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(run.join("root"))
        .unwrap();
    let (served, host_side) = (d.join(share.served()), d.join(share.host_side()));
    std::fs::create_dir_all(&served).unwrap();
    std::fs::create_dir_all(&host_side).unwrap();
    if share == Share::SlaveOfMounts {
        mount_tmpfs(&host_side);
        set_propagation(&host_side, libc::MS_PRIVATE);
        set_propagation(&host_side, libc::MS_SHARED);
    }
    // Written after that mount, so the directory under it stays empty, as the shim's.
    std::fs::create_dir(host_side.join("late")).unwrap();
    std::fs::write(host_side.join("hello"), "hi").unwrap();
    if share == Share::SlaveOfMounts {
        bind(&host_side, &served);
        set_propagation(&served, libc::MS_SLAVE);
        // Read-only, as the shim's is: the guest writes only inside the binds.
        let ro =
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        set_propagation(&served, ro);
    }
    let cgroup = with_cgroup
        .then(cgroup2_root)
        .flatten()
        .map(|r| r.join(format!("hyper-vmm-jail-test-{}", std::process::id())));

    let mut cfg = VmConfig::new(d.join("vmlinux"));
    cfg.memory_mib = 32;
    cfg.serial = SerialOutputConfig::File(run.join("console.log"));
    cfg.api_socket = Some(run.join("vmm.sock"));
    cfg.vsock = Some(VsockConfig {
        uds: run.join("vsock.sock"),
        cid: 3,
    });
    cfg.stop_timeout_ms = 100;
    // The jail alone; the seccomp filters have their own tests.
    cfg.seccomp = false;
    cfg.block.push(BlockConfig {
        path: d.join("disk.img"),
        read_only: true,
        serial: None,
    });
    cfg.fs.push(FsConfig {
        tag: "share".into(),
        shared_dir: served,
        cache: FsCacheMode::None,
        writeback: false,
        xattr: true,
    });
    cfg.net.push(NetConfig {
        tap: None,
        fd: Some(NET_FD),
        mac: None,
    });
    cfg.jail = Some(JailConfig {
        root: run.join("root"),
        cgroup: cgroup.clone(),
    });
    Jailed {
        child: None,
        inner: Default::default(),
        dir,
        cfg,
        cgroup,
        share,
        _net_peer: None,
    }
}

impl Jailed {
    /// Writes the config and spawns hyper-vmm on it, with the net fd (if the config has
    /// one) and the leaked fd.
    fn launch(&mut self) {
        let config = self.path("vm.json");
        std::fs::write(&config, self.cfg.to_json().unwrap()).unwrap();
        let (net_vmm, net_peer) = UnixDatagram::pair().unwrap();
        let secret = std::fs::File::open(self.path("secret")).unwrap();
        let (net_fd, secret_fd) = (net_vmm.as_raw_fd(), secret.as_raw_fd());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hyper-vmm"));
        cmd.arg("--config")
            .arg(&config)
            .env("HYPER_VMM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path("vmm.log")).unwrap());
        // SAFETY: fcntl and dup2 are async-signal-safe; the fds stay open until spawn
        // returns.
        unsafe {
            cmd.pre_exec(move || {
                // Through numbers above both targets first: a source may already be a
                // target's number (dup2 onto itself would keep close-on-exec), or the other
                // target's.
                let mut moved = [(net_fd, NET_FD), (secret_fd, LEAKED_FD)];
                for (from, _) in &mut moved {
                    *from = libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, ABOVE_TARGETS);
                    if *from < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (from, to) in moved {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().unwrap());
        self._net_peer = Some(net_peer);
    }
}

fn ask(socket: &Path, req: Request) -> std::io::Result<Reply> {
    let s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    (&s).write_all(req.to_line().as_bytes())?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Reply::from_line(&line).map_err(std::io::Error::other)
}

/// Waits until the control socket answers `ping` with a running VM.
fn wait_running(vm: &Jailed) {
    let api = vm.api();
    let t = Instant::now();
    while !ask(&api, Request::Ping).is_ok_and(|r| r.state() == Some(VmState::Running)) {
        let gone = !Path::new(&format!("/proc/{}", vm.outer())).exists();
        if gone || t.elapsed() > Duration::from_secs(10) {
            panic!("no ping answered (VMM gone: {gone}); its log:\n{}", log(vm));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn log(vm: &Jailed) -> String {
    std::fs::read_to_string(vm.path("vmm.log")).unwrap_or_default()
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The node name in the UTS namespace of `pid`, read from a thread that joins it.
fn hostname_of(pid: i32) -> String {
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/proc/{pid}/ns/uts")).unwrap();
        // SAFETY: setns on this thread only; uname fills a local struct.
        unsafe {
            assert_eq!(libc::setns(f.as_raw_fd(), libc::CLONE_NEWUTS), 0);
            let mut u: libc::utsname = std::mem::zeroed();
            libc::uname(&mut u);
            std::ffi::CStr::from_ptr(u.nodename.as_ptr())
                .to_string_lossy()
                .into_owned()
        }
    })
    .join()
    .unwrap()
}

/// The optional fields of the mountinfo line of the mount at `path`.
fn propagation_of(path: &Path) -> String {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    // The last one listed is the one on top.
    let line = text
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(path.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{path:?} is not a mount point"));
    let fields: Vec<&str> = line
        .split(" - ")
        .next()
        .unwrap()
        .split(' ')
        .skip(6)
        .collect();
    fields.join(" ")
}

/// A bind the host adds while the VM runs (where the shim would) reaches the jail's share.
fn check_late_bind(vm: &Jailed) {
    let d = vm.dir.path();
    let extra = d.join("extra");
    std::fs::create_dir(&extra).unwrap();
    std::fs::write(extra.join("marker"), "late").unwrap();
    bind(&extra, &d.join(vm.share.host_side()).join("late"));
    let seen = PathBuf::from(format!("/proc/{}/root", vm.inner()))
        .join(d.strip_prefix("/").unwrap())
        .join(vm.share.served())
        .join("late/marker");
    wait_for(
        "the late bind inside the jail",
        Duration::from_secs(2),
        || seen.exists(),
    );
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "late");
}

#[test]
fn a_jailed_vmm_sees_only_what_its_config_names() {
    if !usable() {
        return;
    }
    let mut vm = start(SPIN, true, Share::SlaveOfMounts);
    wait_running(&vm);
    let (outer, inner) = (vm.outer(), vm.inner());
    let root = PathBuf::from(format!("/proc/{inner}/root"));
    let d = vm.dir.path().to_path_buf();
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap());

    // Namespaces: the inner process has its own; the outer one stays in ours.
    for kind in ["mnt", "pid", "net", "ipc", "uts"] {
        let ours = ns("self", kind);
        assert_ne!(
            ns(&inner.to_string(), kind),
            ours,
            "{kind} of the inner pid"
        );
        if kind != "pid" {
            assert_eq!(
                ns(&outer.to_string(), kind),
                ours,
                "{kind} of the outer pid"
            );
        }
    }
    assert_eq!(hostname_of(inner), "hyper-vmm");
    let status = std::fs::read_to_string(format!("/proc/{inner}/status")).unwrap();
    assert!(
        status.contains(&format!("NSpid:\t{inner}\t1\n")),
        "{status}"
    );

    // The root: the top of the temp dir's path, /dev with only kvm, a read-only /proc.
    let top = d.components().nth(1).unwrap().as_os_str().to_string_lossy();
    assert_eq!(
        names(&root),
        BTreeSet::from(["dev".into(), "proc".into(), top.into_owned()])
    );
    assert_eq!(names(&root.join("dev")), BTreeSet::from(["kvm".into()]));
    for host_only in ["etc", "home", "usr", "run/containerd"] {
        assert!(!root.join(host_only).exists(), "/{host_only} is visible");
    }
    let want: BTreeSet<String> = ["disk.img", "run", "vmlinux"].map(String::from).into();
    assert_eq!(names(&inside(&d)), want, "the temp dir as the jail sees it");
    // The run dir is bound as it is, without what is mounted in it: the shim's writable
    // view of the share is not there.
    assert!(names(&inside(&d.join("run/mounts"))).is_empty());
    assert_eq!(
        std::fs::read_to_string(inside(&d.join("run/shared/hello"))).unwrap(),
        "hi"
    );
    let rofs = |p: &Path| {
        let e = std::fs::OpenOptions::new()
            .append(true)
            .open(p)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{p:?}: {e}");
    };
    rofs(&inside(&d.join("vmlinux")));
    rofs(&inside(&d.join("disk.img")));
    let e = std::fs::write(root.join("new"), "x").unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EROFS),
        "the jail's / is writable: {e}"
    );
    // The jail's own /proc: it shows the jail's pid namespace, where the VMM is 1.
    let exe = std::fs::read_link(root.join("proc/1/exe")).unwrap();
    assert_eq!(exe, Path::new(env!("CARGO_BIN_EXE_hyper-vmm")));
    assert_eq!(
        names(&root.join("proc"))
            .iter()
            .filter(|n| n.parse::<u32>().is_ok())
            .count(),
        1
    );

    // Fds: the net fd stayed, the leaked one is closed in both processes.
    let targets = |pid: i32| -> Vec<PathBuf> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
            .collect()
    };
    for pid in [outer, inner] {
        let t = targets(pid);
        assert!(
            !t.contains(&d.join("secret")),
            "pid {pid} kept the leaked fd: {t:?}"
        );
    }
    let net = std::fs::read_link(format!("/proc/{inner}/fd/{NET_FD}")).unwrap();
    assert!(net.to_string_lossy().starts_with("socket:"), "{net:?}");
    let limits = std::fs::read_to_string(format!("/proc/{inner}/limits")).unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max core file size")
            && l.split_whitespace().nth(4) == Some("0")
            && l.split_whitespace().nth(5) == Some("0")),
        "{limits}"
    );
    if let Some(cg) = &vm.cgroup {
        let name = cg.file_name().unwrap().to_string_lossy().into_owned();
        for pid in [outer, inner] {
            let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            assert!(text.contains(&format!("0::/{name}\n")), "pid {pid}: {text}");
        }
    } else {
        println!("no cgroup v2 hierarchy: cgroup join not checked");
    }

    // The shim's kind of share reaches the jail as it is: the host's mounts untouched.
    check_late_bind(&vm);
    let share = propagation_of(&d.join("run/shared"));
    assert!(
        share.starts_with("master:") && !share.contains("shared:"),
        "{share}"
    );
    // Read-only stays read-only in the jail; the bind under it keeps its own flags.
    let e = std::fs::write(inside(&d.join("run/shared/planted")), "x").unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EROFS),
        "the share became writable: {e}"
    );
    std::fs::write(inside(&d.join("run/shared/late/written")), "x").unwrap();
    assert!(d.join("extra/written").exists());

    // A stop through the control socket ends both, with status 0.
    assert_eq!(ask(&vm.api(), Request::Stop).unwrap(), Reply::done());
    let status = vm.wait();
    assert_eq!(status.code(), Some(0), "{}", log(&vm));
    assert!(!Path::new(&format!("/proc/{inner}")).exists());
    assert!(!vm.api().exists(), "the control socket is removed on exit");
    assert!(log(&vm).contains("jailed"), "{}", log(&vm));
}

#[test]
fn a_late_bind_under_a_private_share_dir_reaches_the_jail() {
    if !usable() {
        return;
    }
    let vm = start(SPIN, false, Share::PlainDir);
    wait_running(&vm);
    check_late_bind(&vm);
    // The share became a shared mount of its own (undone when the test drops it).
    let share = propagation_of(&vm.path("share"));
    assert!(share.contains("shared:"), "{share}");
}

#[test]
fn sigterm_to_the_outer_pid_stops_both() {
    if !usable() {
        return;
    }
    let mut vm = start(SPIN, false, Share::PlainDir);
    wait_running(&vm);
    let inner = vm.inner();
    // SAFETY: signalling the process this test started.
    unsafe { libc::kill(vm.outer(), libc::SIGTERM) };
    let status = vm.wait();
    assert_eq!(status.code(), Some(0), "{}", log(&vm));
    assert!(log(&vm).contains("termination signal"), "{}", log(&vm));
    assert!(!Path::new(&format!("/proc/{inner}")).exists());
}

#[test]
fn sigkill_of_the_outer_pid_kills_the_inner_one() {
    if !usable() {
        return;
    }
    // The inner process is reparented to us when the outer one dies, so we can reap it.
    // SAFETY: prctl with integer arguments.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let mut vm = start(SPIN, false, Share::PlainDir);
    wait_running(&vm);
    let inner = vm.inner();
    // SAFETY: signalling the process this test started.
    unsafe { libc::kill(vm.outer(), libc::SIGKILL) };
    vm.wait();
    let mut status = 0;
    wait_for("the inner pid to die", Duration::from_secs(5), || {
        // SAFETY: waits for the orphan we became the reaper of, without blocking.
        unsafe { libc::waitpid(inner, &mut status, libc::WNOHANG) == inner }
    });
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
}

#[test]
fn the_inner_exit_status_is_passed_on() {
    if !usable() {
        return;
    }
    // Killed by a signal: 128 + N, as a shell reports it.
    let mut vm = start(SPIN, false, Share::PlainDir);
    wait_running(&vm);
    // SAFETY: signalling a process this test started (through its parent).
    unsafe { libc::kill(vm.inner(), libc::SIGKILL) };
    assert_eq!(vm.wait().code(), Some(128 + libc::SIGKILL));

    // A guest reset: 0, and the console written through the bound run directory.
    let mut vm = start(RESET, false, Share::PlainDir);
    assert_eq!(vm.wait().code(), Some(0), "{}", log(&vm));
    assert!(log(&vm).contains("reset"), "{}", log(&vm));
    assert!(vm.path("run/console.log").exists());
}

/// The snapshot files are opened before the jail, which closes every other inherited fd:
/// a jailed VMM saves its VM, and a second jailed VMM, with its own jail, restores it.
#[test]
fn a_jailed_vmm_saves_a_snapshot_that_another_jailed_vmm_restores() {
    if !usable() {
        return;
    }
    let snapshots = tempfile::tempdir().unwrap();
    let files = SnapshotFilesConfig {
        state: snapshots.path().join("state.json"),
        memory: snapshots.path().join("memory"),
    };
    let mut saved = prepare(SPIN, false, Share::PlainDir);
    saved.cfg.snapshot = Some(SnapshotConfig {
        save_to: Some(files.clone()),
        restore_from: None,
    });
    saved.launch();
    wait_running(&saved);
    let reply = ask(&saved.api(), Request::Snapshot).unwrap();
    assert_eq!(reply, Reply::done(), "{}", log(&saved));
    assert_eq!(ask(&saved.api(), Request::PowerOff).unwrap(), Reply::done());
    assert_eq!(saved.wait().code(), Some(0), "{}", log(&saved));
    let memory = std::fs::metadata(&files.memory).unwrap().len();
    assert_eq!(memory, 32 << 20, "the saved guest memory");

    let mut restored = prepare(SPIN, false, Share::PlainDir);
    restored.cfg.snapshot = Some(SnapshotConfig {
        save_to: None,
        restore_from: Some(files),
    });
    restored.launch();
    wait_running(&restored);
    assert!(log(&restored).contains("jailed"), "{}", log(&restored));
    assert_eq!(
        ask(&restored.api(), Request::PowerOff).unwrap(),
        Reply::done()
    );
    assert_eq!(restored.wait().code(), Some(0), "{}", log(&restored));
}

#[test]
fn jail_errors_name_the_step_and_path() {
    if !usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("vmlinux");
    std::fs::write(&k, tiny_elf(SPIN)).unwrap();
    std::fs::create_dir(dir.path().join("root")).unwrap();
    type Edit = Box<dyn Fn(&mut VmConfig)>;
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "a tap by name",
            Box::new(|c| {
                c.net
                    .push(hyper_vmm::config::parse_net("tap=tap0").unwrap())
            }),
            "jail: net tap=tap0: a jailed VMM has a network namespace of its own".into(),
        ),
        (
            "no root directory",
            Box::new(|c| c.jail.as_mut().unwrap().root = "/nonexistent/root".into()),
            "jail: cannot find the jail root /nonexistent/root".into(),
        ),
        (
            "a missing initrd, found in the child",
            Box::new(|c| c.initrd = Some("/nonexistent/initrd".into())),
            "jail: cannot find /nonexistent/initrd".into(),
        ),
    ];
    for (name, edit, want) in cases {
        let mut cfg = VmConfig::new(k.clone());
        cfg.serial = SerialOutputConfig::None;
        cfg.jail = Some(JailConfig {
            root: dir.path().join("root"),
            cgroup: None,
        });
        edit(&mut cfg);
        let config = dir.path().join("vm.json");
        std::fs::write(&config, cfg.to_json().unwrap()).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_hyper-vmm"))
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "case {name:?}: {err}");
        assert!(err.contains(&want), "case {name:?}: {err}");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Spawn to the first `ping` answered, with and without the jail (printed; run with
/// --nocapture to see it).
#[test]
fn startup_cost_of_the_jail() {
    if !usable() {
        return;
    }
    const RUNS: usize = 11;
    let mut times = [Vec::new(), Vec::new()];
    for i in 0..2 * RUNS {
        let jailed = i % 2 == 0;
        let mut vm = prepare(SPIN, false, Share::PlainDir);
        if !jailed {
            vm.cfg.jail = None;
        }
        let t = Instant::now();
        vm.launch();
        wait_running(&vm);
        times[usize::from(!jailed)].push(t.elapsed());
        // SAFETY: signalling the process this test started.
        unsafe { libc::kill(vm.outer(), libc::SIGTERM) };
        assert_eq!(vm.wait().code(), Some(0), "{}", log(&vm));
    }
    let [with, without] = times;
    println!(
        "spawn -> ping answered, median of {RUNS}: jailed {:?}, not jailed {:?}",
        median(with),
        median(without)
    );
}
