//! The VM's configuration: the types are the shim <-> VMM contract in `hyper-vmm-api`
//! (what `--config FILE.json` holds); this module checks them against the VMM's limits and
//! parses the flags that fill them in.

use std::path::{Path, PathBuf};

pub use hyper_vmm_api::{
    BlockConfig, DEFAULT_CMDLINE, DEFAULT_MEMORY_MIB, DEFAULT_STOP_TIMEOUT_MS, DEFAULT_VCPUS,
    FS_TAG_MAX, FsCacheMode, FsConfig, MAX_MEMORY_MIB, NetConfig, SerialOutputConfig,
    SnapshotConfig, SnapshotFilesConfig, VmConfig, VsockConfig,
};

use crate::arch::x86_64::layout::MIN_MEMORY_MIB;
use crate::arch::x86_64::mptable::MAX_CPUS;

// The contract states the VMM's vCPU limit; it is the MP table's.
const _: () = assert!(MAX_CPUS == hyper_vmm_api::MAX_VCPUS);

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

/// Reads a `--config` file.
pub fn load_file(path: &Path) -> Result<VmConfig, ConfigError> {
    let err = |why: String| ConfigError::File {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    VmConfig::from_json(&text).map_err(|e| err(e.to_string()))
}

/// The checks a config must pass before the VMM builds from it.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

impl Validate for VmConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let restoring = self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.restore_from.is_some());
        if self.kernel.as_os_str().is_empty() && !restoring {
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
    fn config_files_load_and_their_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.json");
        std::fs::write(&path, r#"{"kernel":"/k","vcpus":2,"rng":true}"#).unwrap();
        let c = load_file(&path).unwrap();
        assert_eq!(
            (c.vcpus, c.rng, c.memory_mib),
            (2, true, DEFAULT_MEMORY_MIB)
        );
        assert!(c.validate().is_ok());
        std::fs::write(&path, r#"{"kernel":"/k","bogus":1}"#).unwrap();
        let e = load_file(&path).unwrap_err().to_string();
        assert!(e.contains("vm.json") && e.contains("unknown field"), "{e}");
        let e = load_file(&dir.path().join("gone.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gone.json"), "{e}");
    }
}
