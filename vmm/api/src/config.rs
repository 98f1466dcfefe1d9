//! The VM's configuration: what `--config FILE.json` holds (and what the VMM's flags fill
//! in). Field names are the JSON keys.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The literal behind [`BASE_CMDLINE`], so that [`DEFAULT_CMDLINE`] can extend it with
/// `concat!` and the options stay written out once.
macro_rules! base_cmdline {
    () => {
        "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1"
    };
}

/// The kernel command line every guest starts from: a serial console, reboot through the
/// keyboard controller (so the VMM sees it), and no slow i8042 and 8250 probing (~0.4 s).
/// Callers add what they need (`quiet`, their own parameters); the VMM appends one
/// `virtio_mmio.device=` entry per device.
pub const BASE_CMDLINE: &str = base_cmdline!();
/// What the VMM uses when the config has no `cmdline`: [`BASE_CMDLINE`] plus `quiet`.
pub const DEFAULT_CMDLINE: &str = concat!(base_cmdline!(), " quiet");

pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 128;
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 5000;
/// Most vCPUs the VMM boots (its MP table's limit).
pub const MAX_VCPUS: u8 = 32;
/// Largest guest the VMM accepts (the memfd and page tables could take more; this is a
/// sanity cap).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Longest virtio-fs tag (virtio 1.2, 5.11.4).
pub const FS_TAG_MAX: usize = 36;

/// Where the guest's serial console goes: `"stdout"`, `"none"` or a file path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SerialOutputConfig {
    #[default]
    Stdout,
    None,
    #[serde(untagged)]
    File(PathBuf),
}

impl SerialOutputConfig {
    pub fn parse(s: &str) -> Self {
        match s {
            "stdout" => SerialOutputConfig::Stdout,
            "none" => SerialOutputConfig::None,
            path => SerialOutputConfig::File(PathBuf::from(path)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The host-side unix socket; guest-initiated connections go to `<uds>_<port>`.
    pub uds: PathBuf,
    /// The guest's CID (at least 3).
    pub cid: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// Returned to the guest by VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// One virtio-net device: exactly one of `tap` and `fd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of an existing tap interface to open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// An already-open tap fd inherited from the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// Guest MAC address, "aa:bb:cc:dd:ee:ff".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// How long the guest may cache what it learnt of the share (virtiofsd's cache modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsCacheMode {
    /// Nothing cached: every access asks the host (for shares the host changes often).
    None,
    /// Attributes and entries for a second, page cache dropped on open.
    #[default]
    Auto,
    /// Everything cached for long (for shares only this guest changes).
    Always,
}

impl std::str::FromStr for FsCacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "never" => Ok(FsCacheMode::None),
            "auto" => Ok(FsCacheMode::Auto),
            "always" => Ok(FsCacheMode::Always),
            _ => Err(format!("cache mode {s:?} is not none, auto or always")),
        }
    }
}

/// A host directory shared into the guest with virtio-fs (`mount -t virtiofs TAG`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The name the guest mounts (at most [`FS_TAG_MAX`] bytes).
    pub tag: String,
    /// An absolute path.
    pub shared_dir: PathBuf,
    #[serde(default)]
    pub cache: FsCacheMode,
    /// Let the guest page cache hold dirty data (safe only for shares nobody else writes).
    #[serde(default)]
    pub writeback: bool,
    /// Pass extended attributes through.
    #[serde(default = "default_true")]
    pub xattr: bool,
}

/// Everything the VMM builds a VM from. Only `kernel` is required in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// An uncompressed ELF vmlinux (or a bzImage).
    pub kernel: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line ([`DEFAULT_CMDLINE`] if absent); virtio_mmio.device=
    /// entries are appended to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    #[serde(default)]
    pub serial: SerialOutputConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// Add a virtio-rng device.
    #[serde(default)]
    pub rng: bool,
    /// The control socket ([`crate::Request`], [`crate::Reply`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
    /// How long `stop` waits for the guest to react to Ctrl-Alt-Del before a hard stop.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: u64,
    /// A seccomp filter on every VMM thread (vCPU, main, virtio-fs worker). Off only for
    /// debugging.
    #[serde(default = "default_true")]
    pub seccomp: bool,
    /// Run jailed: own namespaces, a root holding only what this config names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailConfig>,
    /// Snapshot files: where a `snapshot` request saves the VM, and where it is restored
    /// from instead of booting the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotConfig>,
}

/// The VMM opens these before it enters its jail, so they need no place inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Created (or truncated) at start, mode 0600, and written by a `snapshot` request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_to: Option<SnapshotFilesConfig>,
    /// Restore the VM saved in these (opened read-only) instead of booting: the vCPUs,
    /// memory size and virtio devices must be those of the saved VM; the devices'
    /// backends (sockets, shared directories) may differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<SnapshotFilesConfig>,
}

/// A snapshot's two files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFilesConfig {
    /// The vCPUs', VM's and devices' state (JSON).
    pub state: PathBuf,
    /// Guest memory (sparse).
    pub memory: PathBuf,
}

/// The VMM's jail: before building the VM it moves into new mount, pid, ipc, uts and net
/// namespaces whose `/` holds only the files this config names, each at its host path
/// (so no path needs translating). Net devices must then be given by `fd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// An existing host directory that becomes the jail's `/` (a tmpfs is mounted on it,
    /// visible only inside; the directory itself stays empty).
    pub root: PathBuf,
    /// A cgroup v2 directory the VMM joins first (created if missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}
fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}
fn default_memory() -> u64 {
    DEFAULT_MEMORY_MIB
}
fn default_stop_timeout() -> u64 {
    DEFAULT_STOP_TIMEOUT_MS
}

impl VmConfig {
    /// `kernel` with every other setting at its default.
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: None,
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            serial: SerialOutputConfig::Stdout,
            vsock: None,
            block: Vec::new(),
            net: Vec::new(),
            fs: Vec::new(),
            rng: false,
            api_socket: None,
            stop_timeout_ms: DEFAULT_STOP_TIMEOUT_MS,
            seccomp: true,
            jail: None,
            snapshot: None,
        }
    }

    /// Parses a config file's text (unknown keys are an error).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The text of a config file for this VM.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    /// The command line the guest gets before device entries are appended.
    pub fn base_cmdline(&self) -> &str {
        self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_command_line_is_the_base_plus_quiet() {
        assert_eq!(DEFAULT_CMDLINE, format!("{BASE_CMDLINE} quiet"));
        assert!(BASE_CMDLINE.starts_with("console=ttyS0 reboot=k"));
        assert!(!BASE_CMDLINE.contains("quiet"));
        assert_eq!(VmConfig::new("/k".into()).base_cmdline(), DEFAULT_CMDLINE);
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let c = VmConfig::from_json(
            r#"{"kernel":"/k","serial":"/tmp/console.log","vsock":{"uds":"/v.sock","cid":3},"block":[{"path":"/d","read_only":true}],"rng":true}"#,
        )
        .unwrap();
        assert_eq!(c.vcpus, DEFAULT_VCPUS);
        assert_eq!(c.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(c.stop_timeout_ms, DEFAULT_STOP_TIMEOUT_MS);
        assert_eq!(
            c.serial,
            SerialOutputConfig::File("/tmp/console.log".into())
        );
        assert!(c.rng);
        assert_eq!(VmConfig::from_json(&c.to_json().unwrap()).unwrap(), c);
        let none = VmConfig::from_json(r#"{"kernel":"/k","serial":"none"}"#).unwrap();
        assert_eq!(none.serial, SerialOutputConfig::None);
        assert_eq!(none, {
            let mut n = VmConfig::new("/k".into());
            n.serial = SerialOutputConfig::None;
            n
        });
        assert!(VmConfig::from_json(r#"{"kernel":"/k","bogus":1}"#).is_err());
        assert!(
            VmConfig::from_json(r#"{"vcpus":1}"#).is_err(),
            "kernel is required"
        );
    }

    /// The example in vmm/README.md, every key: files written for it keep working.
    #[test]
    fn every_documented_key_parses() {
        let c = VmConfig::from_json(
            r#"{"kernel": "/k", "initrd": "/i", "cmdline": "x=1", "vcpus": 2, "memory_mib": 256,
                "serial": "stdout", "vsock": {"uds": "/v.sock", "cid": 3},
                "block": [{"path": "/d.img", "read_only": true, "serial": "id"}],
                "net": [{"tap": "tap0", "mac": "02:00:00:00:00:01"}, {"fd": 7}],
                "fs": [{"tag": "share", "shared_dir": "/srv/share", "cache": "auto",
                        "writeback": true, "xattr": false}],
                "rng": true, "api_socket": "/api.sock", "stop_timeout_ms": 100, "seccomp": false,
                "jail": {"root": "/run/p/root", "cgroup": "/sys/fs/cgroup/p"}}"#,
        )
        .unwrap();
        let want = VmConfig {
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            cmdline: Some("x=1".into()),
            vcpus: 2,
            memory_mib: 256,
            serial: SerialOutputConfig::Stdout,
            vsock: Some(VsockConfig {
                uds: "/v.sock".into(),
                cid: 3,
            }),
            block: vec![BlockConfig {
                path: "/d.img".into(),
                read_only: true,
                serial: Some("id".into()),
            }],
            net: vec![
                NetConfig {
                    tap: Some("tap0".into()),
                    fd: None,
                    mac: Some("02:00:00:00:00:01".into()),
                },
                NetConfig {
                    tap: None,
                    fd: Some(7),
                    mac: None,
                },
            ],
            fs: vec![FsConfig {
                tag: "share".into(),
                shared_dir: "/srv/share".into(),
                cache: FsCacheMode::Auto,
                writeback: true,
                xattr: false,
            }],
            rng: true,
            api_socket: Some("/api.sock".into()),
            stop_timeout_ms: 100,
            seccomp: false,
            jail: Some(JailConfig {
                root: "/run/p/root".into(),
                cgroup: Some("/sys/fs/cgroup/p".into()),
            }),
            snapshot: None,
        };
        assert_eq!(c, want);
        assert_eq!(VmConfig::from_json(&c.to_json().unwrap()).unwrap(), want);
        let fs: FsConfig =
            serde_json::from_str(r#"{"tag":"t","shared_dir":"/s","cache":"none"}"#).unwrap();
        assert!(fs.xattr && !fs.writeback && fs.cache == FsCacheMode::None);
        assert_eq!("never".parse::<FsCacheMode>(), Ok(FsCacheMode::None));
        assert!("sometimes".parse::<FsCacheMode>().is_err());
        let jail: JailConfig = serde_json::from_str(r#"{"root":"/r"}"#).unwrap();
        assert_eq!(jail.cgroup, None);
        assert!(serde_json::from_str::<JailConfig>(r#"{"root":"/r","chroot":1}"#).is_err());
        assert!(
            !VmConfig::new("/k".into())
                .to_json()
                .unwrap()
                .contains("jail")
        );
    }
}
