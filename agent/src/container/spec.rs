//! OCI spec → `InitConfig`: parsing (errors name the JSON field), validation, and the
//! pod rewrites (the pod's shared namespaces and files replace host paths, which mean
//! nothing inside the guest).
use super::config::{
    CapsConfig, DeviceConfig, InitConfig, Kind, MountConfig, Ns, ProcessConfig, RootfsConfig,
};
use crate::mount::{self, PathError};
use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, PosixRlimitType, Process, Spec};
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid JSON at {field}: {reason}")]
    Json { field: String, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Path(#[from] PathError),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Parses JSON into `T`; a failure names the path of the offending field.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, SpecError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        SpecError::Json {
            field: if path == "." {
                what.to_string()
            } else {
                format!("{what}.{path}")
            },
            reason: e.into_inner().to_string(),
        }
    })
}

/// What the pod (sandbox) provides to its containers.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    /// True when a sandbox exists: containers use the guest's network namespace.
    pub in_sandbox: bool,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// Set when the pod's containers share one PID namespace.
    pub pid_ns: Option<PathBuf>,
    /// The sandbox container's PID namespace in the guest, while it runs: what a host path
    /// to the sandbox's pid namespace means (CRI's pid mode POD).
    pub sandbox_pid_ns: Option<PathBuf>,
    /// How host-written specs name the pod's namespaces (see `names_pod`).
    pub host_task_pid: Option<u32>,
    pub host_netns: Option<PathBuf>,
    /// Files that replace the spec's mounts of /etc/hosts, /etc/resolv.conf, /etc/hostname.
    pub etc_files: Vec<(PathBuf, PathBuf)>,
    /// Directory shared as the pod's /dev/shm.
    pub shm_dir: Option<PathBuf>,
}

/// Everything `container_config` needs besides the spec.
pub struct Inputs<'a> {
    pub rootfs: &'a Path,
    pub pod: &'a PodContext,
    /// Roots bind-mount sources must resolve under.
    pub allowed_roots: &'a [PathBuf],
    pub cgroup_procs: Option<PathBuf>,
}

/// Validates `spec` and builds the helper's configuration for the container's init.
pub fn container_config(spec: &Spec, inp: &Inputs) -> Result<InitConfig, SpecError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process", "missing"))?;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| invalid("linux", "missing"))?;
    let (join, new) = namespaces(linux.namespaces().as_deref().unwrap_or(&[]), inp.pod)?;
    if !new.contains(&Ns::Mount) && !join.iter().any(|(n, _)| *n == Ns::Mount) {
        return Err(invalid("linux.namespaces", "a mount namespace is required"));
    }
    if join.iter().any(|(n, _)| *n == Ns::Mount) {
        return Err(invalid(
            "linux.namespaces",
            "joining an existing mount namespace for a new container is not supported",
        ));
    }
    let owns_uts = new.contains(&Ns::Uts);
    let hostname = match spec.hostname() {
        Some(h) if !h.is_empty() => {
            validate_hostname("hostname", h)?;
            if !owns_uts && !inp.pod.in_sandbox {
                return Err(invalid("hostname", "set without a new uts namespace"));
            }
            // In a pod the containers share the pod's uts namespace and its hostname.
            owns_uts.then(|| h.clone())
        }
        _ => None,
    };
    let domainname = spec
        .domainname()
        .clone()
        .filter(|d| !d.is_empty() && owns_uts);

    let mut mounts = Vec::new();
    for (i, m) in spec.mounts().as_deref().unwrap_or(&[]).iter().enumerate() {
        mounts.push(mount_config(i, m, inp)?);
    }
    let mut devices = Vec::new();
    for (i, d) in linux.devices().as_deref().unwrap_or(&[]).iter().enumerate() {
        let field = format!("linux.devices[{i}]");
        let path = d.path();
        device_path(&format!("{field}.path"), path)?;
        let kind = match d.typ() {
            LinuxDeviceType::C => 'c',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::U => 'u',
            LinuxDeviceType::P => 'p',
            LinuxDeviceType::A => {
                return Err(invalid(
                    format!("{field}.type"),
                    "\"a\" is not a device type",
                ));
            }
        };
        if d.major() < 0 || d.minor() < 0 {
            return Err(invalid(field, "negative major/minor"));
        }
        devices.push(DeviceConfig {
            path: path.clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    let mut sysctl: Vec<(String, String)> = Vec::new();
    for (k, v) in linux.sysctl().clone().unwrap_or_default() {
        if k.is_empty()
            || k.contains("..")
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(invalid(format!("linux.sysctl.{k}"), "bad key"));
        }
        sysctl.push((k, v));
    }
    sysctl.sort();
    let propagation = linux.rootfs_propagation().clone().filter(|p| !p.is_empty());
    if let Some(p) = &propagation
        && !matches!(
            p.as_str(),
            "shared"
                | "rshared"
                | "slave"
                | "rslave"
                | "private"
                | "rprivate"
                | "unbindable"
                | "runbindable"
        )
    {
        return Err(invalid(
            "linux.rootfsPropagation",
            format!("unknown value {p:?}"),
        ));
    }
    for (i, p) in linux
        .masked_paths()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        abs_clean(&format!("linux.maskedPaths[{i}]"), Path::new(p))?;
    }
    for (i, p) in linux
        .readonly_paths()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        abs_clean(&format!("linux.readonlyPaths[{i}]"), Path::new(p))?;
    }
    let rootfs = RootfsConfig {
        path: inp.rootfs.to_path_buf(),
        readonly: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        propagation,
        mounts,
        devices,
        masked_paths: linux.masked_paths().clone().unwrap_or_default(),
        readonly_paths: linux.readonly_paths().clone().unwrap_or_default(),
    };
    let tty = process.terminal().unwrap_or(false);
    let mut pc = process_config("process", process)?;
    if let Some(s) = linux.seccomp() {
        pc.seccomp = crate::seccomp::compile(s).map_err(|e| invalid(e.field, e.reason))?;
    }
    Ok(InitConfig {
        kind: Kind::Container,
        join,
        new,
        cgroup_procs: inp.cgroup_procs.clone(),
        rootfs: Some(rootfs),
        hostname,
        domainname,
        sysctl,
        oom_score_adj: process.oom_score_adj(),
        process: pc,
        tty,
    })
}

/// Namespaces to join (with their paths) and namespaces to create.
type NsPlan = (Vec<(Ns, PathBuf)>, Vec<Ns>);

/// Which namespaces to join and which to create. In a pod, network, ipc and uts are the
/// pod's (pid too when the pod shares it), and a path may only name one of the pod's own
/// namespaces: host paths mean nothing in the guest.
fn namespaces(
    list: &[oci_spec::runtime::LinuxNamespace],
    pod: &PodContext,
) -> Result<NsPlan, SpecError> {
    let mut seen = HashSet::new();
    let mut join = Vec::new();
    let mut new = Vec::new();
    for (i, n) in list.iter().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        if !seen.insert(n.typ()) {
            return Err(invalid(field, format!("duplicate {} namespace", n.typ())));
        }
        let ns = match n.typ() {
            LinuxNamespaceType::Mount => Ns::Mount,
            LinuxNamespaceType::Pid => Ns::Pid,
            LinuxNamespaceType::Network => Ns::Net,
            LinuxNamespaceType::Ipc => Ns::Ipc,
            LinuxNamespaceType::Uts => Ns::Uts,
            LinuxNamespaceType::Cgroup => Ns::Cgroup,
            other => {
                return Err(invalid(
                    format!("{field}.type"),
                    format!("{other} namespaces are not supported"),
                ));
            }
        };
        let path = n.path().as_deref().filter(|p| !p.as_os_str().is_empty());
        if pod.in_sandbox {
            match pod_namespace(ns, path, pod)
                .map_err(|reason| invalid(format!("{field}.path"), reason))?
            {
                PodNs::Join(p) => join.push((ns, p)),
                PodNs::New => new.push(ns),
                PodNs::Guest => {}
            }
            continue;
        }
        match path {
            Some(p) => {
                abs_clean(&format!("{field}.path"), p)?;
                if !p.exists() {
                    return Err(invalid(
                        format!("{field}.path"),
                        format!("{p:?} does not exist"),
                    ));
                }
                join.push((ns, p.to_path_buf()));
            }
            None => new.push(ns),
        }
    }
    Ok((join, new))
}

/// Where a container of the pod gets one of its namespaces.
#[derive(Debug, PartialEq)]
enum PodNs {
    Join(PathBuf),
    New,
    /// The guest's own: its network namespace is the pod's network.
    Guest,
}

fn pod_namespace(ns: Ns, path: Option<&Path>, pod: &PodContext) -> Result<PodNs, String> {
    if let Some(p) = path
        && !names_pod(ns, p, pod)
    {
        return Err(format!(
            "{p:?} is not one of this pod's namespaces: the containers of a hyper pod run in \
             its VM and can share only the pod's own namespaces"
        ));
    }
    let holder = |p: &Option<PathBuf>| p.clone().map_or(PodNs::New, PodNs::Join);
    Ok(match (ns, path) {
        (Ns::Net, _) => PodNs::Guest,
        (Ns::Ipc, _) => holder(&pod.ipc_ns),
        (Ns::Uts, _) => holder(&pod.uts_ns),
        (Ns::Pid, _) if pod.pid_ns.is_some() => holder(&pod.pid_ns),
        (Ns::Pid, Some(_)) => {
            PodNs::Join(pod.sandbox_pid_ns.clone().ok_or(
                "the pod's sandbox container, whose PID namespace this is, is not running",
            )?)
        }
        (Ns::Mount | Ns::Cgroup, Some(_)) => {
            return Err(format!(
                "joining the sandbox's {} namespace is not supported",
                ns.proc_name()
            ));
        }
        (Ns::Pid | Ns::Mount | Ns::Cgroup, None) => PodNs::New,
    })
}

/// Whether a host path names one of the pod's namespaces: the CNI network namespace, or
/// `/proc/<pid>/ns/<type>` of the pid containerd knows the pod's tasks by.
fn names_pod(ns: Ns, p: &Path, pod: &PodContext) -> bool {
    if ns == Ns::Net && pod.host_netns.as_deref() == Some(p) {
        return true;
    }
    pod.host_task_pid
        .is_some_and(|pid| p == Path::new(&format!("/proc/{pid}/ns/{}", ns.proc_name())))
}

fn mount_config(
    i: usize,
    m: &oci_spec::runtime::Mount,
    inp: &Inputs,
) -> Result<MountConfig, SpecError> {
    let field = format!("mounts[{i}]");
    let dest = m.destination();
    if !dest.is_absolute() {
        return Err(invalid(
            format!("{field}.destination"),
            format!("{dest:?} is not absolute"),
        ));
    }
    no_dotdot(&format!("{field}.destination"), dest)?;
    let options = m.options().clone().unwrap_or_default();
    let is_bind =
        m.typ().as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind");
    let typ = m
        .typ()
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            if is_bind {
                "bind".into()
            } else {
                String::new()
            }
        });
    if typ.is_empty() {
        return Err(invalid(format!("{field}.type"), "missing"));
    }
    let mut source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if is_bind {
        // The pod's own files and /dev/shm replace whatever host path the spec names.
        if let Some((_, file)) = inp.pod.etc_files.iter().find(|(d, _)| d == dest) {
            source = file.to_string_lossy().into_owned();
        } else if dest == Path::new("/dev/shm")
            && let Some(shm) = &inp.pod.shm_dir
        {
            source = shm.to_string_lossy().into_owned();
        } else {
            let resolved = mount::check_under_roots(
                &format!("{field}.source"),
                Path::new(&source),
                inp.allowed_roots,
            )?;
            source = resolved.to_string_lossy().into_owned();
        }
    }
    Ok(MountConfig {
        destination: dest.clone(),
        typ,
        source,
        options,
    })
}

/// Credentials, capabilities, limits and the command of a process.
pub fn process_config(field: &str, p: &Process) -> Result<ProcessConfig, SpecError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() || args[0].is_empty() {
        return Err(invalid(format!("{field}.args"), "must name a program"));
    }
    let cwd = p.cwd().clone();
    if !cwd.is_absolute() {
        return Err(invalid(
            format!("{field}.cwd"),
            format!("{cwd:?} is not absolute"),
        ));
    }
    let env = p.env().clone().unwrap_or_default();
    for (i, e) in env.iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') || e.contains('\0') {
            return Err(invalid(
                format!("{field}.env[{i}]"),
                format!("{e:?} is not KEY=value"),
            ));
        }
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err(invalid(format!("{field}.args"), "contains a NUL byte"));
    }
    let caps = match p.capabilities() {
        None => None,
        Some(c) => {
            let conv = |name: &str, set: &Option<oci_spec::runtime::Capabilities>| -> Vec<String> {
                let _ = name;
                let mut v: Vec<String> = set.iter().flatten().map(|c| format!("CAP_{c}")).collect();
                v.sort();
                v
            };
            let cc = CapsConfig {
                bounding: conv("bounding", c.bounding()),
                effective: conv("effective", c.effective()),
                inheritable: conv("inheritable", c.inheritable()),
                permitted: conv("permitted", c.permitted()),
                ambient: conv("ambient", c.ambient()),
            };
            for name in cc
                .bounding
                .iter()
                .chain(&cc.effective)
                .chain(&cc.inheritable)
                .chain(&cc.permitted)
                .chain(&cc.ambient)
            {
                if name.parse::<caps::Capability>().is_err() {
                    return Err(invalid(
                        format!("{field}.capabilities"),
                        format!("{name} is not known to this kernel interface"),
                    ));
                }
            }
            Some(cc)
        }
    };
    let mut rlimits = Vec::new();
    let mut seen = HashSet::new();
    for (i, r) in p.rlimits().as_deref().unwrap_or(&[]).iter().enumerate() {
        let f = format!("{field}.rlimits[{i}]");
        if !seen.insert(rlimit_number(r.typ())) {
            return Err(invalid(f, format!("duplicate {:?}", r.typ())));
        }
        if r.soft() > r.hard() {
            return Err(invalid(f, "soft limit above hard limit"));
        }
        rlimits.push((rlimit_number(r.typ()), r.soft(), r.hard()));
    }
    if let Some(adj) = p.oom_score_adj()
        && !(-1000..=1000).contains(&adj)
    {
        return Err(invalid(
            format!("{field}.oomScoreAdj"),
            format!("{adj} outside -1000..1000"),
        ));
    }
    let user = p.user();
    if let Some(m) = user.umask()
        && m > 0o777
    {
        return Err(invalid(
            format!("{field}.user.umask"),
            format!("{m:o} is not a umask"),
        ));
    }
    Ok(ProcessConfig {
        args,
        env,
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        caps,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        rlimits,
        seccomp: Vec::new(),
    })
}

// The RLIMIT_* type differs between libcs.
#[allow(clippy::unnecessary_cast)]
fn rlimit_number(t: PosixRlimitType) -> u32 {
    use PosixRlimitType as R;
    (match t {
        R::RlimitCpu => libc::RLIMIT_CPU,
        R::RlimitFsize => libc::RLIMIT_FSIZE,
        R::RlimitData => libc::RLIMIT_DATA,
        R::RlimitStack => libc::RLIMIT_STACK,
        R::RlimitCore => libc::RLIMIT_CORE,
        R::RlimitRss => libc::RLIMIT_RSS,
        R::RlimitNproc => libc::RLIMIT_NPROC,
        R::RlimitNofile => libc::RLIMIT_NOFILE,
        R::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        R::RlimitAs => libc::RLIMIT_AS,
        R::RlimitLocks => libc::RLIMIT_LOCKS,
        R::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        R::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        R::RlimitNice => libc::RLIMIT_NICE,
        R::RlimitRtprio => libc::RLIMIT_RTPRIO,
        R::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as u32
}

/// Hostnames: 1..=64 bytes of letters, digits, '-' and '.'.
pub fn validate_hostname(field: &str, h: &str) -> Result<(), SpecError> {
    if h.is_empty()
        || h.len() > 64
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(invalid(field, format!("{h:?} is not a valid hostname")));
    }
    Ok(())
}

/// A device node's path: a name below /dev, no `..` (symlinks are refused when the node
/// is made, see `devices`), short enough for the kernel.
fn device_path(field: &str, p: &Path) -> Result<(), SpecError> {
    no_dotdot(field, p)?;
    if !p.is_absolute() || !p.starts_with("/dev") || p == Path::new("/dev") {
        return Err(invalid(field, format!("{p:?} is not a name under /dev")));
    }
    if p.as_os_str().len() >= libc::PATH_MAX as usize {
        return Err(invalid(field, "longer than PATH_MAX"));
    }
    Ok(())
}

fn no_dotdot(field: &str, p: &Path) -> Result<(), SpecError> {
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(PathError::DotDot {
            field: field.into(),
            path: p.into(),
        }
        .into());
    }
    Ok(())
}

fn abs_clean(field: &str, p: &Path) -> Result<(), SpecError> {
    if !p.is_absolute() {
        return Err(PathError::NotAbsolute {
            field: field.into(),
            path: p.into(),
        }
        .into());
    }
    no_dotdot(field, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        parse_json(json.to_string().as_bytes(), "oci_spec_json").unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "box",
            "process": {
                "terminal": false,
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [5, 6], "umask": 18},
                "args": ["sh", "-c", "true"],
                "env": ["PATH=/bin", "A=b"],
                "cwd": "/tmp",
                "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
                "noNewPrivileges": true,
                "oomScoreAdj": 100
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}, {"type": "network"}],
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"],
                "sysctl": {"net.ipv4.ip_forward": "1"}
            }
        })
    }

    fn convert(v: serde_json::Value, pod: &PodContext) -> Result<InitConfig, SpecError> {
        let s = spec(v);
        container_config(
            &s,
            &Inputs {
                rootfs: Path::new("/run/x/rootfs"),
                pod,
                allowed_roots: &[PathBuf::from("/tmp")],
                cgroup_procs: None,
            },
        )
    }

    #[test]
    fn full_conversion() {
        let c = convert(base(), &PodContext::default()).unwrap();
        assert_eq!(c.kind, Kind::Container);
        assert!(c.join.is_empty());
        assert_eq!(c.new, vec![Ns::Pid, Ns::Mount, Ns::Uts, Ns::Ipc, Ns::Net]);
        assert_eq!(c.hostname.as_deref(), Some("box"));
        let p = &c.process;
        assert_eq!(
            (p.uid, p.gid, p.additional_gids.clone()),
            (1000, 1000, vec![5, 6])
        );
        assert_eq!(p.umask, Some(0o22));
        assert!(p.no_new_privileges);
        assert_eq!(
            p.rlimits,
            vec![(rlimit_number(PosixRlimitType::RlimitNofile), 512, 1024)]
        );
        let caps = p.caps.as_ref().unwrap();
        assert_eq!(
            caps.bounding,
            vec!["CAP_CHOWN".to_string(), "CAP_KILL".to_string()]
        );
        assert_eq!(caps.effective, vec!["CAP_KILL".to_string()]);
        assert_eq!(c.oom_score_adj, Some(100));
        let r = c.rootfs.unwrap();
        assert!(r.readonly);
        assert_eq!(r.mounts.len(), 2);
        assert_eq!(
            r.mounts[1].options,
            vec!["nosuid".to_string(), "mode=755".to_string()]
        );
        assert_eq!(c.sysctl, vec![("net.ipv4.ip_forward".into(), "1".into())]);
    }

    /// A CRI pod: containerd was told pid 4242 for its tasks, CNI made cni-123.
    fn cri_pod() -> PodContext {
        PodContext {
            in_sandbox: true,
            ipc_ns: Some("/proc/77/ns/ipc".into()),
            uts_ns: Some("/proc/77/ns/uts".into()),
            sandbox_pid_ns: Some("/proc/90/ns/pid".into()),
            host_task_pid: Some(4242),
            host_netns: Some("/var/run/netns/cni-123".into()),
            ..Default::default()
        }
    }

    #[test]
    fn pod_namespaces_map_host_paths() {
        let shared_pid = PodContext {
            pid_ns: Some("/proc/78/ns/pid".into()),
            ..cri_pod()
        };
        let no_sandbox_yet = PodContext {
            sandbox_pid_ns: None,
            ..cri_pod()
        };
        type Want = Result<(Vec<(Ns, &'static str)>, Vec<Ns>), &'static str>;
        let cases: [(&str, serde_json::Value, &PodContext, Want); 9] = [
            (
                "the sandbox container itself (CNI netns, new ipc/uts/pid)",
                serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                    {"type": "network", "path": "/var/run/netns/cni-123"}]),
                &cri_pod(),
                Ok((
                    vec![(Ns::Ipc, "/proc/77/ns/ipc"), (Ns::Uts, "/proc/77/ns/uts")],
                    vec![Ns::Pid, Ns::Mount],
                )),
            ),
            (
                "an app container, pid mode POD: the sandbox container's pid namespace",
                serde_json::json!([{"type": "pid", "path": "/proc/4242/ns/pid"}, {"type": "mount"},
                    {"type": "network", "path": "/proc/4242/ns/net"},
                    {"type": "ipc", "path": "/proc/4242/ns/ipc"}, {"type": "uts", "path": "/proc/4242/ns/uts"}]),
                &cri_pod(),
                Ok((
                    vec![
                        (Ns::Pid, "/proc/90/ns/pid"),
                        (Ns::Ipc, "/proc/77/ns/ipc"),
                        (Ns::Uts, "/proc/77/ns/uts"),
                    ],
                    vec![Ns::Mount],
                )),
            ),
            (
                "an app container, pid mode CONTAINER",
                serde_json::json!([{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/proc/4242/ns/net"}]),
                &cri_pod(),
                Ok((vec![], vec![Ns::Pid, Ns::Mount])),
            ),
            (
                "a pod whose containers share the holder's pid namespace",
                serde_json::json!([{"type": "pid", "path": "/proc/4242/ns/pid"}, {"type": "mount"}]),
                &shared_pid,
                Ok((vec![(Ns::Pid, "/proc/78/ns/pid")], vec![Ns::Mount])),
            ),
            (
                "another process's namespace on the host",
                serde_json::json!([{"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}]),
                &cri_pod(),
                Err(
                    "linux.namespaces[1].path: \"/proc/1/ns/net\" is not one of this pod's namespaces",
                ),
            ),
            (
                "another pod's network namespace",
                serde_json::json!([{"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-999"}]),
                &cri_pod(),
                Err("linux.namespaces[1].path: \"/var/run/netns/cni-999\" is not one of"),
            ),
            (
                "the pod's pid path given for the wrong type",
                serde_json::json!([{"type": "mount"}, {"type": "ipc", "path": "/proc/4242/ns/pid"}]),
                &cri_pod(),
                Err("linux.namespaces[1].path: \"/proc/4242/ns/pid\" is not one of"),
            ),
            (
                "the sandbox's pid namespace before the sandbox container runs",
                serde_json::json!([{"type": "mount"}, {"type": "pid", "path": "/proc/4242/ns/pid"}]),
                &no_sandbox_yet,
                Err("linux.namespaces[1].path: the pod's sandbox container"),
            ),
            (
                "the sandbox's mount namespace",
                serde_json::json!([{"type": "mount", "path": "/proc/4242/ns/mnt"}]),
                &cri_pod(),
                Err(
                    "linux.namespaces[0].path: joining the sandbox's mnt namespace is not supported",
                ),
            ),
        ];
        for (case, list, pod, want) in cases {
            let mut v = base();
            v["linux"]["namespaces"] = list;
            match (convert(v, pod), want) {
                (Ok(c), Ok((join, new))) => {
                    let join: Vec<(Ns, PathBuf)> =
                        join.into_iter().map(|(n, p)| (n, p.into())).collect();
                    assert_eq!((c.join, c.new), (join, new), "{case}");
                    // The pod's uts namespace carries the pod's hostname.
                    assert_eq!(c.hostname, None, "{case}");
                }
                (Err(e), Err(want)) => {
                    let e = e.to_string();
                    assert!(e.starts_with(want), "{case}: {e}");
                }
                (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn err_of(v: serde_json::Value) -> String {
        convert(v, &PodContext::default()).unwrap_err().to_string()
    }

    #[test]
    fn violations_name_the_field() {
        let mut v = base();
        v["process"]["args"] = serde_json::json!([]);
        assert!(err_of(v).starts_with("process.args"));
        let mut v = base();
        v["process"]["cwd"] = "tmp".into();
        assert!(err_of(v).starts_with("process.cwd"));
        let mut v = base();
        v["process"]["env"] = serde_json::json!(["NOEQUALS"]);
        assert!(err_of(v).starts_with("process.env[0]"));
        let mut v = base();
        v["mounts"][1]["destination"] = "dev".into();
        assert!(err_of(v).starts_with("mounts[1].destination"));
        let mut v = base();
        v["mounts"][0]["destination"] = "/a/../../etc".into();
        assert!(err_of(v).starts_with("mounts[0].destination"));
        let mut v = base();
        v["linux"]["namespaces"] =
            serde_json::json!([{"type": "pid"}, {"type": "pid"}, {"type": "mount"}]);
        assert!(err_of(v).starts_with("linux.namespaces[1]"));
        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]);
        assert!(err_of(v).contains("mount namespace is required"));
        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "user"}]);
        assert!(err_of(v).starts_with("linux.namespaces[1].type"));
        let mut v = base();
        v["process"]["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 2}]);
        assert!(err_of(v).starts_with("process.rlimits[0]"));
        let mut v = base();
        v["hostname"] = "bad host!".into();
        assert!(err_of(v).starts_with("hostname"));
        let mut v = base();
        v["process"]["oomScoreAdj"] = 5000.into();
        assert!(err_of(v).starts_with("process.oomScoreAdj"));
        let mut v = base();
        v["linux"]["devices"] =
            serde_json::json!([{"path": "/etc/x", "type": "c", "major": 1, "minor": 3}]);
        assert!(err_of(v).starts_with("linux.devices[0].path"));
        let mut v = base();
        v.as_object_mut().unwrap().remove("process");
        assert!(err_of(v).starts_with("process"));
    }

    #[test]
    fn device_paths_are_names_under_dev() {
        let long = format!("/dev/{}", "a/".repeat(2100));
        #[rustfmt::skip]
        let cases: [(&str, Option<&str>); 10] = [
            ("/dev/null", None),
            ("/dev/net/tun", None),
            ("/dev//ptmx", None),
            ("../escape", Some("'..'")),
            ("dev/null", Some("is not a name under /dev")),
            ("/dev", Some("is not a name under /dev")),
            ("/dev/", Some("is not a name under /dev")),
            ("/devices/x", Some("is not a name under /dev")),
            ("/dev/../etc/x", Some("'..'")),
            (&long, Some("PATH_MAX")),
        ];
        for (path, want) in cases {
            let mut v = base();
            v["linux"]["devices"] =
                serde_json::json!([{"path": path, "type": "c", "major": 1, "minor": 3}]);
            let got = convert(v, &PodContext::default());
            match (want, got) {
                (None, Ok(c)) => assert_eq!(c.rootfs.unwrap().devices[0].path, Path::new(path)),
                (Some(w), Err(e)) => {
                    let e = e.to_string();
                    assert!(
                        e.starts_with("linux.devices[0].path") && e.contains(w),
                        "{path}: {e}"
                    );
                }
                (want, got) => panic!("{path}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn bind_sources_must_stay_in_allowed_roots() {
        let mut v = base();
        v["mounts"] = serde_json::json!([{"destination": "/x", "type": "bind", "source": "/etc", "options": ["rbind"]}]);
        let e = err_of(v);
        assert!(e.starts_with("mounts[0].source"), "{e}");
        assert!(e.contains("outside the allowed roots"), "{e}");
        let mut v = base();
        v["mounts"] = serde_json::json!([{"destination": "/x", "source": "/tmp/../etc", "options": ["bind"]}]);
        assert!(err_of(v).contains("'..'"));
        let mut v = base();
        v["mounts"] = serde_json::json!([{"destination": "/x", "type": "bind", "source": "/tmp"}]);
        assert_eq!(
            convert(v, &PodContext::default())
                .unwrap()
                .rootfs
                .unwrap()
                .mounts[0]
                .source,
            std::fs::canonicalize("/tmp").unwrap().to_string_lossy()
        );
    }

    #[test]
    fn pod_files_replace_bind_sources() {
        let mut v = base();
        v["mounts"] = serde_json::json!([
            {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/containerd/x/resolv.conf", "options": ["rbind", "ro"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/x/shm", "options": ["rbind"]}
        ]);
        let pod = PodContext {
            etc_files: vec![(
                "/etc/resolv.conf".into(),
                "/run/hyper/sandbox/resolv.conf".into(),
            )],
            shm_dir: Some("/run/hyper/sandbox/shm".into()),
            ..Default::default()
        };
        let c = convert(v, &pod).unwrap();
        let m = c.rootfs.unwrap().mounts;
        assert_eq!(m[0].source, "/run/hyper/sandbox/resolv.conf");
        assert_eq!(m[1].source, "/run/hyper/sandbox/shm");
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<Spec>(
            br#"{"ociVersion":"1","process":{"user":{"uid":"x","gid":0},"cwd":"/"}}"#,
            "oci_spec_json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("oci_spec_json.process.user.uid"), "{e}");
        let e = parse_json::<Spec>(b"not json", "oci_spec_json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("oci_spec_json"), "{e}");
    }

    #[test]
    fn unknown_capability_is_refused() {
        let mut v = base();
        v["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_NOPE"]);
        // oci-spec itself refuses unknown names while parsing.
        assert!(parse_json::<Spec>(v.to_string().as_bytes(), "oci_spec_json").is_err());
    }
}
