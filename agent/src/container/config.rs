//! What the agent hands to its `__init` helper: a validated, self-contained description
//! of one process to create (namespaces to join or create, cgroup, rootfs and mounts,
//! credentials). Built from the OCI spec by `spec`, sent by `spawn`, consumed by `child`.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A container's init: sets up the rootfs, waits for Start, then execs.
    Container,
    /// A process exec'd into a running container.
    Exec,
    /// The sandbox's namespace holder: PID 1 of the pod's shared namespaces.
    Holder,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ns {
    Mount,
    Pid,
    Net,
    Ipc,
    Uts,
    Cgroup,
}

impl Ns {
    pub fn flag(self) -> nix::sched::CloneFlags {
        use nix::sched::CloneFlags as F;
        match self {
            Ns::Mount => F::CLONE_NEWNS,
            Ns::Pid => F::CLONE_NEWPID,
            Ns::Net => F::CLONE_NEWNET,
            Ns::Ipc => F::CLONE_NEWIPC,
            Ns::Uts => F::CLONE_NEWUTS,
            Ns::Cgroup => F::CLONE_NEWCGROUP,
        }
    }

    /// Name under /proc/<pid>/ns/.
    pub fn proc_name(self) -> &'static str {
        match self {
            Ns::Mount => "mnt",
            Ns::Pid => "pid",
            Ns::Net => "net",
            Ns::Ipc => "ipc",
            Ns::Uts => "uts",
            Ns::Cgroup => "cgroup",
        }
    }

    pub const ALL: [Ns; 6] = [Ns::Cgroup, Ns::Ipc, Ns::Uts, Ns::Net, Ns::Pid, Ns::Mount];
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct InitConfig {
    pub kind: Kind,
    /// Namespaces to enter with setns, in order.
    pub join: Vec<(Ns, PathBuf)>,
    /// Namespaces to create with unshare.
    pub new: Vec<Ns>,
    /// `cgroup.procs` file the process moves itself into before anything else.
    pub cgroup_procs: Option<PathBuf>,
    pub rootfs: Option<RootfsConfig>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub sysctl: Vec<(String, String)>,
    pub oom_score_adj: Option<i32>,
    pub process: ProcessConfig,
    /// stdin/stdout/stderr are a pty slave: become its controlling process.
    pub tty: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct RootfsConfig {
    pub path: PathBuf,
    pub readonly: bool,
    /// rootfsPropagation ("rslave" when empty).
    pub propagation: Option<String>,
    pub mounts: Vec<MountConfig>,
    pub devices: Vec<DeviceConfig>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MountConfig {
    pub destination: PathBuf,
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    pub path: PathBuf,
    /// 'c', 'b', 'u' (unbuffered char) or 'p' (fifo).
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct ProcessConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    /// None: keep what the process has (root: everything).
    pub caps: Option<CapsConfig>,
    pub no_new_privileges: bool,
    /// (RLIMIT_* number, soft, hard).
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Compiled seccomp filters, installed last (see `seccomp`).
    pub seccomp: Vec<crate::seccomp::Program>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct CapsConfig {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub inheritable: Vec<String>,
    pub permitted: Vec<String>,
    pub ambient: Vec<String>,
}

/// One line the helper writes back on its status pipe.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Status {
    /// Stage 1 forked the process; its pid in the agent's pid namespace.
    Pid(i32),
    /// The process is set up and waits for Start.
    Ready,
    /// Setup or exec failed.
    Error(String),
}
