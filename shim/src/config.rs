//! The shim's configuration: `/etc/hyper/config.toml`, or the file named by the CRI runtime
//! options' `ConfigPath` (`ctr run --runtime-config-path`), else built-in defaults.
//! Unknown keys are an error naming the key, so a typo never silently falls back.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/hyper/config.toml";
/// The resolved config as a pod's shim used it, kept in each container's bundle: `delete`
/// after a shim crash must find that pod's state dir, whatever file the shim was given.
pub const RECORDED_CONFIG: &str = "hyper-config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub agent: AgentConfig,
    pub runtime: RuntimeConfig,
    pub factory: FactoryConfig,
}

/// VM templates (Kata's VM factory): a VM of each shape boots once, is saved when its
/// agent is ready, and new pods of that shape restore from it instead of booting.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FactoryConfig {
    /// Restore pods from templates, built on first use and cached under
    /// `<runtime.state_dir>/.templates`, keyed by kernel, image, VMM and VM shape. Only
    /// pods without network devices on a virtio-fs share use them yet; others boot.
    pub template: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorConfig {
    /// The VMM binary (`hyper-vmm`); a bare name is looked up on PATH.
    pub path: PathBuf,
    /// Guest kernel (uncompressed ELF vmlinux).
    pub kernel: PathBuf,
    /// Guest image (initramfs whose /init is hyper-agent).
    pub image: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Appended to the kernel command line the VMM builds.
    pub kernel_params: String,
    /// Keep the guest console (serial) in the sandbox's state dir; off means `quiet` boots.
    pub debug_console: bool,
    /// How long the VM may take from VMM start to agent answering.
    pub boot_timeout_ms: u64,
    /// How container rootfs and volumes reach the guest: "virtio-fs" (one share per pod;
    /// later containers join the running VM) or "none" (an ext4 copy of the first
    /// container's rootfs on a virtio-blk disk; one container per VM).
    pub shared_fs: SharedFs,
    /// virtio-fs cache mode: "none", "auto" or "always" (as virtiofsd's).
    pub virtio_fs_cache: VirtioFsCache,
    /// Run each hyper-vmm in its jail (own namespaces, a root holding only the VM's
    /// files); off only for debugging.
    pub jail: bool,
    /// Run hyper-vmm's threads under their seccomp filters; off only for debugging.
    pub seccomp: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub enum SharedFs {
    #[default]
    #[serde(rename = "virtio-fs")]
    VirtioFs,
    #[serde(rename = "none")]
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VirtioFsCache {
    None,
    #[default]
    Auto,
    Always,
}

impl VirtioFsCache {
    pub fn as_str(self) -> &'static str {
        match self {
            VirtioFsCache::None => "none",
            VirtioFsCache::Auto => "auto",
            VirtioFsCache::Always => "always",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Timeout of one agent call that is not expected to block (create, start, kill ...).
    pub request_timeout_ms: u64,
    /// Timeout of CreateContainer (the guest may mount and set up a lot).
    pub create_container_timeout_ms: u64,
    /// Serve a root shell in the guest on vsock port 1026 (`hyperctl exec --sandbox`):
    /// for debugging; anyone who can reach the pod's vsock socket gets it.
    pub debug_console: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// error, warn, info, debug or trace.
    pub log_level: String,
    /// Where each sandbox keeps its sockets, console log and share dir.
    pub state_dir: PathBuf,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("hyper-vmm"),
            kernel: PathBuf::from("/usr/share/hyper/vmlinux"),
            image: PathBuf::from("/usr/share/hyper/initramfs.cpio.gz"),
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            debug_console: false,
            boot_timeout_ms: 30_000,
            shared_fs: SharedFs::default(),
            virtio_fs_cache: VirtioFsCache::default(),
            jail: true,
            seccomp: true,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            request_timeout_ms: 10_000,
            create_container_timeout_ms: 60_000,
            debug_console: false,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            state_dir: PathBuf::from("/run/hyper"),
        }
    }
}

const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

impl Config {
    /// Loads `explicit` if given (it must exist), else the default path if it exists,
    /// else the built-in defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        match explicit {
            Some(p) => Self::from_file(p),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_PATH))
            }
            None => Ok(Self::default()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        Self::parse(&text, path)
    }

    /// Parses TOML text; `origin` only names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.message().to_string()
                + &e.span()
                    .map(|s| format!(" (at byte {})", s.start))
                    .unwrap_or_default(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            field,
            message,
        };
        let h = &self.hypervisor;
        let max_vcpus = u32::from(hyper_vmm_api::MAX_VCPUS);
        if h.vcpus == 0 || h.vcpus > max_vcpus {
            return Err(invalid(
                "hypervisor.vcpus",
                format!(
                    "{} is not in 1..={max_vcpus} (what hyper-vmm takes)",
                    h.vcpus
                ),
            ));
        }
        if h.memory_mib < 64 {
            return Err(invalid(
                "hypervisor.memory_mib",
                format!(
                    "{} MiB is too small for a guest (at least 64)",
                    h.memory_mib
                ),
            ));
        }
        if h.boot_timeout_ms == 0 {
            return Err(invalid("hypervisor.boot_timeout_ms", "must be > 0".into()));
        }
        if !LOG_LEVELS.contains(&self.runtime.log_level.as_str()) {
            return Err(invalid(
                "runtime.log_level",
                format!("{:?} is not one of {LOG_LEVELS:?}", self.runtime.log_level),
            ));
        }
        Ok(())
    }

    /// The config `record` left in `bundle`, if any.
    pub fn recorded(bundle: &Path) -> Option<Result<Self, ConfigError>> {
        let path = bundle.join(RECORDED_CONFIG);
        path.exists().then(|| Self::from_file(&path))
    }

    pub fn boot_timeout(&self) -> Duration {
        Duration::from_millis(self.hypervisor.boot_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.agent.request_timeout_ms)
    }

    pub fn create_container_timeout(&self) -> Duration {
        Duration::from_millis(self.agent.create_container_timeout_ms)
    }
}

/// Writes `config` into `bundle` for [`Config::recorded`].
pub fn record(config: &Config, bundle: &Path) -> Result<(), String> {
    let path = bundle.join(RECORDED_CONFIG);
    let text = toml::to_string(config).map_err(|e| format!("serialise config: {e}"))?;
    crate::state_dir::create_private_file(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    /// `make install` writes deploy/config.toml with its paths filled in: it must say
    /// exactly the defaults, so that installing changes nothing but where files are.
    #[test]
    fn the_installed_config_is_the_defaults() {
        let text = include_str!("../../deploy/config.toml")
            .replace("@BINDIR@", "/usr/bin")
            .replace("@DATADIR@", "/usr/share/hyper");
        let mut want = Config::default();
        want.hypervisor.path = PathBuf::from("/usr/bin/hyper-vmm");
        assert_eq!(parse(&text).unwrap(), want);
    }

    #[test]
    fn every_section_parses() {
        let c = parse(
            r#"
            [hypervisor]
            path = "/opt/hyper/bin/hyper-vmm"
            kernel = "/k"
            image = "/i"
            vcpus = 2
            memory_mib = 512
            kernel_params = "agent.debug=1"
            debug_console = true
            boot_timeout_ms = 90000
            shared_fs = "none"
            virtio_fs_cache = "always"
            jail = false
            seccomp = false
            [agent]
            request_timeout_ms = 5000
            create_container_timeout_ms = 7000
            [runtime]
            log_level = "debug"
            state_dir = "/tmp/hyper"
            [factory]
            template = true
            "#,
        )
        .unwrap();
        assert_eq!(c.hypervisor.vcpus, 2);
        assert_eq!(c.hypervisor.memory_mib, 512);
        assert!(c.hypervisor.debug_console);
        assert_eq!(c.hypervisor.shared_fs, SharedFs::None);
        assert_eq!(c.hypervisor.virtio_fs_cache, VirtioFsCache::Always);
        assert!(!c.hypervisor.jail && !c.hypervisor.seccomp);
        assert_eq!(c.boot_timeout(), Duration::from_secs(90));
        assert_eq!(c.request_timeout(), Duration::from_secs(5));
        assert_eq!(c.create_container_timeout(), Duration::from_secs(7));
        assert_eq!(c.runtime.state_dir, PathBuf::from("/tmp/hyper"));
        assert!(c.factory.template);
        // Unset keys keep their defaults.
        let partial = parse("[hypervisor]\nvcpus = 4\n").unwrap();
        assert_eq!(partial.hypervisor.memory_mib, 256);
        assert_eq!(partial.hypervisor.shared_fs, SharedFs::VirtioFs);
        assert_eq!(partial.hypervisor.virtio_fs_cache, VirtioFsCache::Auto);
        assert!(partial.hypervisor.jail && partial.hypervisor.seccomp);
        assert!(!partial.factory.template, "templates are opt-in");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[hypervisor]\nvcpu = 2\n").unwrap_err().to_string();
        assert!(err.contains("vcpu") && err.contains("test.toml"), "{err}");
        let err = parse("[hypervisr]\n").unwrap_err().to_string();
        assert!(err.contains("hypervisr"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        for (text, field) in [
            ("[hypervisor]\nvcpus = 0\n", "hypervisor.vcpus"),
            ("[hypervisor]\nmemory_mib = 16\n", "hypervisor.memory_mib"),
            (
                "[hypervisor]\nboot_timeout_ms = 0\n",
                "hypervisor.boot_timeout_ms",
            ),
            ("[runtime]\nlog_level = \"loud\"\n", "runtime.log_level"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let err = parse("[hypervisor]\nshared_fs = \"9p\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("9p"), "{err}");
        let err = parse("[hypervisor]\nvcpus = \"two\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn a_recorded_config_reads_back_the_same() {
        let bundle = tempfile::tempdir().unwrap();
        assert!(Config::recorded(bundle.path()).is_none());
        let mut config = parse("[runtime]\nstate_dir = \"/tmp/hyper\"\n[hypervisor]\nshared_fs = \"none\"\nvirtio_fs_cache = \"always\"\n").unwrap();
        config.hypervisor.kernel_params = "a=b".into();
        record(&config, bundle.path()).unwrap();
        let back = Config::recorded(bundle.path()).unwrap().unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/hyper.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/hyper.toml"), "{err}");
    }
}
