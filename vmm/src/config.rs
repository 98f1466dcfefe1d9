//! The VM's configuration: what `--config FILE.json` holds and what the flags fill in.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::layout::MIN_MEMORY_MIB;
use crate::arch::x86_64::mptable::MAX_CPUS;

/// Used when no command line is given: a serial console, reboot through the keyboard
/// controller (so the VMM sees it), and no slow i8042 probing.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1";
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 128;
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 5000;
/// Largest guest we accept (the memfd and page tables could take more; this is a sanity cap).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("no kernel given (--kernel or \"kernel\" in the config file)")]
    NoKernel,
    #[error("vcpus must be between 1 and {MAX_CPUS}, got {0}")]
    Vcpus(u64),
    #[error(
        "memory must be at least {MIN_MEMORY_MIB} MiB and at most {MAX_MEMORY_MIB} MiB, got {0} MiB"
    )]
    Memory(u64),
    #[error("bad {what} option {value:?}: {why}")]
    BadOption {
        what: &'static str,
        value: String,
        why: String,
    },
    #[error("vsock guest CID must be at least 3, got {0}")]
    Cid(u64),
    #[error("cannot read config file {path}: {why}")]
    File { path: String, why: String },
}

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
    pub cid: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// Returned to the guest by VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    #[serde(default)]
    pub serial: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of an existing tap interface to open.
    #[serde(default)]
    pub tap: Option<String>,
    /// An already-open tap fd inherited from the parent.
    #[serde(default)]
    pub fd: Option<i32>,
    /// Guest MAC address, "aa:bb:cc:dd:ee:ff".
    #[serde(default)]
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
    /// The name the guest mounts (at most 36 bytes, the virtio-fs limit).
    pub tag: String,
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

/// Longest virtio-fs tag (virtio 1.2, 5.11.4).
pub const FS_TAG_MAX: usize = 36;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// The kernel command line; virtio_mmio.device= entries are appended to it.
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    #[serde(default)]
    pub serial: SerialOutputConfig,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    #[serde(default)]
    pub rng: bool,
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// How long `stop` waits for the guest to react to Ctrl-Alt-Del before a hard stop.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: u64,
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
        }
    }

    pub fn from_json_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let err = |why: String| ConfigError::File {
            path: path.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if self.vcpus == 0 || self.vcpus > MAX_CPUS {
            return Err(ConfigError::Vcpus(u64::from(self.vcpus)));
        }
        if self.memory_mib < MIN_MEMORY_MIB || self.memory_mib > MAX_MEMORY_MIB {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        if let Some(v) = &self.vsock
            && (v.cid < 3 || v.cid > u64::from(u32::MAX))
        {
            return Err(ConfigError::Cid(v.cid));
        }
        for b in &self.block {
            if let Some(s) = &b.serial
                && s.len() > 20
            {
                return Err(ConfigError::BadOption {
                    what: "block",
                    value: s.clone(),
                    why: "serial is longer than 20 bytes".into(),
                });
            }
        }
        for n in &self.net {
            if n.tap.is_some() == n.fd.is_some() {
                return Err(ConfigError::BadOption {
                    what: "net",
                    value: format!("{n:?}"),
                    why: "give exactly one of tap=NAME or fd=N".into(),
                });
            }
            if let Some(mac) = &n.mac {
                parse_mac(mac).map_err(|why| ConfigError::BadOption {
                    what: "net",
                    value: mac.clone(),
                    why,
                })?;
            }
        }
        let mut tags = std::collections::HashSet::new();
        for f in &self.fs {
            let bad = |why: String| ConfigError::BadOption {
                what: "fs",
                value: f.tag.clone(),
                why,
            };
            if f.tag.is_empty() || f.tag.len() > FS_TAG_MAX || f.tag.contains('\0') {
                return Err(bad(format!(
                    "the tag must be 1 to {FS_TAG_MAX} bytes without NUL"
                )));
            }
            if !tags.insert(f.tag.as_str()) {
                return Err(bad("two shares have this tag".into()));
            }
            if !f.shared_dir.is_absolute() {
                return Err(bad(format!(
                    "shared_dir {} is not an absolute path",
                    f.shared_dir.display()
                )));
            }
        }
        Ok(())
    }

    /// The command line the guest gets before device entries are appended.
    pub fn base_cmdline(&self) -> &str {
        self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }
}

/// Splits "k=v,k2=v2" into pairs.
fn key_values(what: &'static str, s: &str) -> Result<Vec<(String, String)>, ConfigError> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| ConfigError::BadOption {
                    what,
                    value: s.to_string(),
                    why: format!("{p:?} is not key=value"),
                })
        })
        .collect()
}

fn parse_bool(what: &'static str, s: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "true" | "on" | "1" | "yes" => Ok(true),
        "false" | "off" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::BadOption {
            what,
            value: s.to_string(),
            why: format!("{v:?} is not a boolean"),
        }),
    }
}

/// `path=P[,ro=true][,serial=S]`
pub fn parse_block(s: &str) -> Result<BlockConfig, ConfigError> {
    let bad = |why: String| ConfigError::BadOption {
        what: "block",
        value: s.to_string(),
        why,
    };
    let mut path = None;
    let mut read_only = false;
    let mut serial = None;
    for (k, v) in key_values("block", s)? {
        match k.as_str() {
            "path" => path = Some(PathBuf::from(v)),
            "ro" | "readonly" | "read_only" => read_only = parse_bool("block", s, &v)?,
            "serial" | "id" => serial = Some(v),
            other => return Err(bad(format!("unknown key {other:?}"))),
        }
    }
    Ok(BlockConfig {
        path: path.ok_or_else(|| bad("path= is required".into()))?,
        read_only,
        serial,
    })
}

/// `tap=NAME[,mac=MAC]` or `fd=N[,mac=MAC]`
pub fn parse_net(s: &str) -> Result<NetConfig, ConfigError> {
    let bad = |why: String| ConfigError::BadOption {
        what: "net",
        value: s.to_string(),
        why,
    };
    let mut n = NetConfig {
        tap: None,
        fd: None,
        mac: None,
    };
    for (k, v) in key_values("net", s)? {
        match k.as_str() {
            "tap" => n.tap = Some(v),
            "fd" => n.fd = Some(v.parse().map_err(|_| bad(format!("bad fd {v:?}")))?),
            "mac" => n.mac = Some(v),
            other => return Err(bad(format!("unknown key {other:?}"))),
        }
    }
    Ok(n)
}

/// `tag=T,path=DIR[,cache=none|auto|always][,writeback=B][,xattr=B]`
pub fn parse_fs(s: &str) -> Result<FsConfig, ConfigError> {
    let bad = |why: String| ConfigError::BadOption {
        what: "fs",
        value: s.to_string(),
        why,
    };
    let (mut tag, mut dir) = (None, None);
    let (mut cache, mut writeback, mut xattr) = (FsCacheMode::default(), false, true);
    for (k, v) in key_values("fs", s)? {
        match k.as_str() {
            "tag" => tag = Some(v),
            "path" | "shared_dir" => dir = Some(PathBuf::from(v)),
            "cache" => cache = v.parse().map_err(bad)?,
            "writeback" => writeback = parse_bool("fs", s, &v)?,
            "xattr" => xattr = parse_bool("fs", s, &v)?,
            other => return Err(bad(format!("unknown key {other:?}"))),
        }
    }
    Ok(FsConfig {
        tag: tag.ok_or_else(|| bad("tag= is required".into()))?,
        shared_dir: dir.ok_or_else(|| bad("path= is required".into()))?,
        cache,
        writeback,
        xattr,
    })
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err("a MAC address has six parts".into());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("{p:?} is not a hex byte"))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_and_net_options() {
        let b = parse_block("path=/x.img,ro=true,serial=disk0").unwrap();
        assert_eq!(b.path, PathBuf::from("/x.img"));
        assert!(b.read_only);
        assert_eq!(b.serial.as_deref(), Some("disk0"));
        assert!(parse_block("ro=true").is_err());
        assert!(parse_block("path=/x,bogus=1").is_err());
        assert!(parse_block("path=/x,ro=maybe").is_err());
        let n = parse_net("tap=tap0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(n.tap.as_deref(), Some("tap0"));
        assert_eq!(parse_mac("02:00:00:00:00:01").unwrap(), [2, 0, 0, 0, 0, 1]);
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:00").is_err());
        assert_eq!(parse_net("fd=7").unwrap().fd, Some(7));
    }

    #[test]
    fn fs_options() {
        let f = parse_fs("tag=share,path=/srv/x,cache=none").unwrap();
        assert_eq!(f.tag, "share");
        assert_eq!(f.shared_dir, PathBuf::from("/srv/x"));
        assert_eq!(f.cache, FsCacheMode::None);
        assert!(!f.writeback && f.xattr);
        assert_eq!(parse_fs("tag=a,path=/x").unwrap().cache, FsCacheMode::Auto);
        let e = parse_fs("tag=a,path=/x,cache=sometimes").unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
        assert!(parse_fs("path=/x").is_err());
        assert!(parse_fs("tag=a").is_err());
        assert!(parse_fs("tag=a,path=/x,dax=1").is_err());

        let mut c = VmConfig::new("/k".into());
        c.fs.push(parse_fs("tag=a,path=/x").unwrap());
        assert!(c.validate().is_ok());
        c.fs.push(parse_fs("tag=a,path=/y").unwrap());
        assert!(c.validate().unwrap_err().to_string().contains("two shares"));
        c.fs[1] = parse_fs(&format!("tag={},path=/y", "t".repeat(37))).unwrap();
        assert!(c.validate().is_err());
        c.fs[1] = parse_fs("tag=b,path=relative").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("absolute"));
    }

    #[test]
    fn validation() {
        let mut c = VmConfig::new("/k".into());
        assert!(c.validate().is_ok());
        c.memory_mib = 1;
        assert_eq!(c.validate(), Err(ConfigError::Memory(1)));
        c.memory_mib = 128;
        c.vcpus = 0;
        assert!(c.validate().is_err());
        c.vcpus = 2;
        c.vsock = Some(VsockConfig {
            uds: "/v".into(),
            cid: 2,
        });
        assert_eq!(c.validate(), Err(ConfigError::Cid(2)));
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","serial":"/tmp/console.log","vsock":{"uds":"/v.sock","cid":3},"block":[{"path":"/d","read_only":true}],"rng":true}"#,
        )
        .unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 128);
        assert_eq!(
            c.serial,
            SerialOutputConfig::File("/tmp/console.log".into())
        );
        assert!(c.rng);
        let s: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(s, c);
        let none: VmConfig = serde_json::from_str(r#"{"kernel":"/k","serial":"none"}"#).unwrap();
        assert_eq!(none.serial, SerialOutputConfig::None);
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel":"/k","bogus":1}"#).is_err());
    }
}
