//! The `__init` helper, the child side of `spawn`: the agent re-executes itself to get a
//! fresh single-threaded process (setns into a mount namespace needs one), which then
//!
//! * stage 1: reads its `InitConfig` (fd 3), moves into the cgroup, joins and creates
//!   namespaces, forks stage 2, reports stage 2's pid (fd 4), waits for the agent's ack
//!   (so the agent registers the pid before stage 2 can be reaped), exits;
//! * stage 2 (in the new pid namespace): sets up the rootfs and `pivot_root`s, reports
//!   `Ready`, blocks on the start pipe (fd 5) until Start, drops privileges and execs.
//!
//! Any failure is written to the status pipe, which is close-on-exec: EOF after `Ready`
//! means the exec succeeded.
use super::config::{
    CapsConfig, InitConfig, Kind, MountConfig, ProcessConfig, RootfsConfig, Status,
};
use crate::mount::{parse_options, secure_join};
use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{ForkResult, Gid, Uid, chdir, fork, pivot_root};
use std::ffi::CString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const CONFIG_FD: i32 = 3;
pub const STATUS_FD: i32 = 4;
pub const START_FD: i32 = 5;
/// argv[1] that makes the agent binary act as this helper.
pub const ARG: &str = "__init";

pub fn main() -> ! {
    // SAFETY: the agent set up fds 3..=5 for us (see spawn::spawn); nothing else owns them.
    let mut status = unsafe { File::from_raw_fd(STATUS_FD) };
    for fd in [CONFIG_FD, STATUS_FD, START_FD] {
        let _ = nix::fcntl::fcntl(
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    let err = stage1(&mut status).unwrap_err();
    report(&mut status, &Status::Error(format!("{err:#}")));
    std::process::exit(1)
}

fn report(status: &mut File, s: &Status) {
    if let Ok(mut line) = serde_json::to_vec(s) {
        line.push(b'\n');
        let _ = status.write_all(&line);
    }
}

fn stage1(status: &mut File) -> Result<std::convert::Infallible> {
    // SAFETY: see `main`.
    let config_pipe = unsafe { File::from_raw_fd(CONFIG_FD) };
    let mut config_pipe = BufReader::new(config_pipe);
    let mut line = String::new();
    config_pipe.read_line(&mut line).context("read config")?;
    let cfg: InitConfig = serde_json::from_str(&line).context("parse config")?;

    let mut ns_files = Vec::new();
    for (ns, path) in &cfg.join {
        let f = File::open(path)
            .with_context(|| format!("open {ns:?} namespace {}", path.display()))?;
        ns_files.push((*ns, path, f));
    }
    if let Some(procs) = &cfg.cgroup_procs {
        std::fs::write(procs, "0").with_context(|| format!("join cgroup {}", procs.display()))?;
    }
    for (ns, path, f) in &ns_files {
        nix::sched::setns(f, ns.flag())
            .with_context(|| format!("setns {ns:?} {}", path.display()))?;
    }
    let mut flags = nix::sched::CloneFlags::empty();
    for ns in &cfg.new {
        flags |= ns.flag();
    }
    if !flags.is_empty() {
        nix::sched::unshare(flags).with_context(|| format!("unshare {:?}", cfg.new))?;
    }
    if cfg.kind == Kind::Holder
        && let Some(h) = &cfg.hostname
    {
        nix::unistd::sethostname(h).context("sethostname")?;
    }
    // SAFETY: this process is single-threaded (a fresh exec of the agent running only this).
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            let err = match stage2(&cfg, status) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            report(status, &Status::Error(format!("{err:#}")));
            std::process::exit(127)
        }
        ForkResult::Parent { child } => {
            report(status, &Status::Pid(child.as_raw()));
            // Wait for the agent to register the pid (or to go away).
            let mut ack = [0u8; 1];
            let _ = config_pipe.read(&mut ack);
            std::process::exit(0)
        }
    }
}

fn stage2(cfg: &InitConfig, status: &mut File) -> Result<std::convert::Infallible> {
    nix::unistd::setsid().context("setsid")?;
    if cfg.tty {
        // SAFETY: plain ioctl on stdin, which is the pty slave.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            bail!("TIOCSCTTY: {}", std::io::Error::last_os_error());
        }
    }
    if cfg.kind == Kind::Holder {
        report(status, &Status::Ready);
        holder_loop();
    }
    umask(Mode::empty());
    // Before the rootfs: its /proc/sys is read-only (CRI's readonlyPaths). The guest's
    // /proc/sys shows this process's namespaces (ipc, net, uts), which the keys are of.
    for (k, v) in &cfg.sysctl {
        let p = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&p, v).with_context(|| format!("sysctl {k}={v}"))?;
    }
    if let Some(r) = &cfg.rootfs {
        setup_rootfs(r, cfg.tty).context("rootfs")?;
    }
    if let Some(h) = &cfg.hostname {
        nix::unistd::sethostname(h).context("sethostname")?;
    }
    if let Some(d) = &cfg.domainname {
        set_domainname(d)?;
    }
    for (res, soft, hard) in &cfg.process.rlimits {
        let lim = libc::rlimit {
            rlim_cur: *soft,
            rlim_max: *hard,
        };
        // SAFETY: setrlimit with a valid pointer.
        if unsafe { libc::setrlimit(*res as _, &lim) } != 0 {
            bail!("setrlimit {res}: {}", std::io::Error::last_os_error());
        }
    }
    if let Some(adj) = cfg.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).context("oom_score_adj")?;
    }
    report(status, &Status::Ready);
    // SAFETY: fd 5 is ours (see `main`).
    let mut start = unsafe { File::from_raw_fd(START_FD) };
    let mut b = [0u8; 1];
    if start.read(&mut b).unwrap_or(0) == 0 {
        // The agent dropped the container before starting it.
        std::process::exit(1);
    }
    drop(start);
    exec(&cfg.process)
}

/// PID 1 of the pod's shared namespaces: reaps whatever is reparented to it.
fn holder_loop() -> ! {
    loop {
        match nix::sys::wait::wait() {
            Ok(_) => continue,
            Err(_) => {
                nix::unistd::pause();
            }
        }
    }
}

fn set_domainname(d: &str) -> Result<()> {
    // SAFETY: valid pointer and length.
    if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
        bail!("setdomainname: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The mount point of the mount that holds `path`: the longest mount point that `path`
/// lies under.
fn mount_point_of(path: &Path) -> Result<PathBuf> {
    crate::mount::mount_points()
        .into_iter()
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.components().count())
        .with_context(|| format!("no mount holds {}", path.display()))
}

fn propagation_flags(p: Option<&str>) -> MsFlags {
    match p.unwrap_or("rslave") {
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    }
}

/// `console`: stdin is the process's terminal, to be made the container's /dev/console.
/// Binds the terminal (the pty slave on stdin) onto the container's /dev/console, as runc
/// does. The pty lives in the guest's devpts, not the container's own instance, so this is
/// also the name under which the container finds its terminal (`tty` prints /dev/console).
fn bind_console(root: &Path) -> Result<()> {
    let console = secure_join(root, Path::new("/dev/console"))?;
    if let Some(parent) = console.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::symlink_metadata(&console).is_err() {
        std::fs::File::create(&console).context("create /dev/console")?;
    }
    // By its path: the fd itself belongs to the agent's mount namespace, which a bind
    // mount may not take from; the path finds this namespace's copy of the same devpts.
    let slave = std::fs::read_link("/proc/self/fd/0").context("name of the terminal")?;
    mount(
        Some(&slave),
        &console,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("bind the terminal on /dev/console")
}

fn setup_rootfs(r: &RootfsConfig, console: bool) -> Result<()> {
    let none: Option<&str> = None;
    mount(
        none,
        "/",
        none,
        propagation_flags(r.propagation.as_deref()),
        none,
    )
    .context("set / propagation")?;
    let root = &r.path;
    mount(
        Some(root),
        root,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .with_context(|| format!("bind rootfs {}", root.display()))?;
    let mut dev_is_tmpfs = false;
    for m in &r.mounts {
        mount_one(root, m).with_context(|| format!("mount {}", m.destination.display()))?;
        if m.destination == Path::new("/dev") {
            dev_is_tmpfs = m.typ == "tmpfs";
        }
    }
    super::devices::setup(root, &r.devices, dev_is_tmpfs)?;
    if console {
        bind_console(root)?;
    }
    // pivot_root and MS_MOVE refuse a rootfs whose parent mount is shared (as it is with
    // rootfsPropagation "shared"/"rshared"); like runc, make that one mount private.
    let parent = mount_point_of(root.parent().unwrap_or(Path::new("/")))?;
    mount(none, &parent, none, MsFlags::MS_PRIVATE, none).with_context(|| {
        format!(
            "make the rootfs's parent mount {} private",
            parent.display()
        )
    })?;
    // pivot_root(".", "."): the old root ends up on top of the new one; detach it.
    chdir(root).context("chdir rootfs")?;
    match pivot_root(".", ".") {
        Ok(()) => {
            mount(none, ".", none, MsFlags::MS_SLAVE | MsFlags::MS_REC, none)
                .context("old root rslave")?;
            umount2(".", MntFlags::MNT_DETACH).context("detach old root")?;
        }
        // The agent's root is the initramfs itself (it could not leave it at boot):
        // pivot_root refuses rootfs, so move the rootfs over / and chroot, like runc's
        // --no-pivot. Weaker (chroot), hence the agent normally leaves the initramfs.
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some("."), "/", none, MsFlags::MS_MOVE, none).context("move rootfs to /")?;
            nix::unistd::chroot(".").context("chroot")?;
        }
        Err(e) => return Err(e).context("pivot_root"),
    }
    chdir("/")?;
    for p in &r.masked_paths {
        mask_path(Path::new(p)).with_context(|| format!("mask {p}"))?;
    }
    for p in &r.readonly_paths {
        readonly_path(Path::new(p)).with_context(|| format!("readonly {p}"))?;
    }
    if r.readonly {
        mount(
            none,
            "/",
            none,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            none,
        )
        .context("remount / read-only")?;
    }
    Ok(())
}

fn mount_one(root: &Path, m: &MountConfig) -> Result<()> {
    let none: Option<&str> = None;
    let dest = secure_join(root, &m.destination)?;
    let opts = parse_options(&m.options);
    let data = opts.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if m.typ == "bind" || opts.flags.contains(MsFlags::MS_BIND) {
        let src = Path::new(&m.source);
        let meta = std::fs::metadata(src).with_context(|| format!("bind source {}", m.source))?;
        if meta.is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else {
            if let Some(p) = dest.parent() {
                std::fs::create_dir_all(p)?;
            }
            if !dest.exists() {
                File::create(&dest)?;
            }
        }
        mount(
            Some(src),
            &dest,
            none,
            MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC),
            none,
        )?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if !extra.is_empty() {
            mount(
                none,
                &dest,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                none,
            )
            .context("remount bind with options")?;
        }
    } else {
        std::fs::create_dir_all(&dest)?;
        // A v1 "cgroup" mount in a spec means the guest's (v2) hierarchy.
        let fstype = if m.typ == "cgroup" {
            "cgroup2"
        } else {
            m.typ.as_str()
        };
        let res = mount(
            Some(m.source.as_str()),
            &dest,
            Some(fstype),
            opts.flags,
            data,
        );
        match res {
            // sysfs in a shared network namespace, mqueue, ...: fall back to a read-only
            // bind of the agent's own, as runc does for sysfs in rootless setups.
            Err(nix::errno::Errno::EPERM) if fstype == "sysfs" => {
                mount(
                    Some("/sys"),
                    &dest,
                    none,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none,
                )?;
                mount(
                    none,
                    &dest,
                    none,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    none,
                )?;
            }
            r => r.with_context(|| format!("{fstype} from {}", m.source))?,
        }
    }
    for p in &opts.propagation {
        mount(none, &dest, none, *p, none).context("propagation")?;
    }
    Ok(())
}

fn mask_path(p: &Path) -> Result<()> {
    let none: Option<&str> = None;
    let Ok(meta) = std::fs::metadata(p) else {
        return Ok(());
    };
    if meta.is_dir() {
        mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, none)?;
    } else {
        mount(Some("/dev/null"), p, none, MsFlags::MS_BIND, none)?;
    }
    Ok(())
}

fn readonly_path(p: &Path) -> Result<()> {
    let none: Option<&str> = None;
    if !p.exists() {
        return Ok(());
    }
    mount(Some(p), p, none, MsFlags::MS_BIND | MsFlags::MS_REC, none)?;
    mount(
        none,
        p,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        none,
    )?;
    Ok(())
}

/// The home directory of `uid` in the (container's) /etc/passwd.
fn home_of(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
    })
}

fn find_program(name: &str, env: &[String]) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':').map(|d| Path::new(d).join(name)).find(|p| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

fn parse_caps(names: &[String]) -> Result<caps::CapsHashSet> {
    names
        .iter()
        .map(|n| {
            n.parse::<caps::Capability>()
                .map_err(|e| anyhow::anyhow!("{n}: {e}"))
        })
        .collect()
}

fn apply_caps_before_setuid(c: &CapsConfig) -> Result<()> {
    let keep = parse_caps(&c.bounding)?;
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Capabilities this kernel does not know cannot be in the set anyway.
            let _ = caps::drop(None, caps::CapSet::Bounding, cap);
        }
    }
    Ok(())
}

fn apply_caps_after_setuid(c: &CapsConfig) -> Result<()> {
    use caps::CapSet;
    // Every capset must keep effective within permitted: shrink effective first.
    caps::set(None, CapSet::Effective, &parse_caps(&c.effective)?).context("effective caps")?;
    let inheritable = parse_caps(&c.inheritable)?;
    let permitted = parse_caps(&c.permitted)?;
    caps::set(None, CapSet::Inheritable, &inheritable).context("inheritable caps")?;
    caps::set(None, CapSet::Permitted, &permitted).context("permitted caps")?;
    caps::clear(None, CapSet::Ambient).context("clear ambient caps")?;
    // The kernel takes an ambient cap only if it is permitted and inheritable; like runc,
    // skip the others (`runc spec` lists ambient caps without inheritable ones).
    for cap in parse_caps(&c.ambient)? {
        if inheritable.contains(&cap) && permitted.contains(&cap) {
            caps::raise(None, CapSet::Ambient, cap).with_context(|| format!("ambient {cap}"))?;
        }
    }
    Ok(())
}

fn exec(p: &ProcessConfig) -> Result<std::convert::Infallible> {
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        // As runc: the user's home from the container's /etc/passwd, else "/".
        env.push(format!(
            "HOME={}",
            home_of(p.uid).unwrap_or_else(|| "/".into())
        ));
    }
    let prog = find_program(&p.args[0], &env)
        .with_context(|| format!("exec {:?}: not found in PATH", p.args[0]))?;
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we have it.
    if !p.seccomp.is_empty() && !p.no_new_privileges {
        crate::seccomp::install(&p.seccomp).context("seccomp")?;
    }
    if let Some(c) = &p.caps {
        apply_caps_before_setuid(c)?;
        nix::sys::prctl::set_keepcaps(true).context("keepcaps")?;
    }
    let groups: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).context("setgroups")?;
    let gid = Gid::from_raw(p.gid);
    nix::unistd::setresgid(gid, gid, gid).context("setresgid")?;
    let uid = Uid::from_raw(p.uid);
    nix::unistd::setresuid(uid, uid, uid).context("setresuid")?;
    if let Some(c) = &p.caps {
        nix::sys::prctl::set_keepcaps(false).context("keepcaps")?;
        apply_caps_after_setuid(c)?;
    }
    if p.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().context("no_new_privs")?;
    }
    umask(Mode::from_bits_truncate(p.umask.unwrap_or(0o022)));
    chdir(&p.cwd).with_context(|| format!("chdir {}", p.cwd.display()))?;
    let cstr = |s: &str| CString::new(s).context("NUL byte");
    let prog_c = CString::new(prog.as_os_str().as_encoded_bytes()).context("NUL in path")?;
    let args = p.args.iter().map(|a| cstr(a)).collect::<Result<Vec<_>>>()?;
    let envs = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>>>()?;
    if !p.seccomp.is_empty() && p.no_new_privileges {
        // As late as possible: the filter then only has to allow execve.
        crate::seccomp::install(&p.seccomp).context("seccomp")?;
    }
    let err = nix::unistd::execve(&prog_c, &args, &envs).unwrap_err();
    bail!("exec {}: {err}", prog.display())
}
