//! A template's key: everything its VM was built from, hashed. A rebuilt kernel, image or
//! VMM, another shape or command line gives another key, so a stale template is never
//! restored: it is only left unused.
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::Config;

use super::{FactoryError, Shape};

/// Bumped when what a template holds changes meaning (e.g. the agent's ready point).
const KEY_FORMAT: u32 = 1;

/// The text a template's key hashes, one input per line (kept beside the template, so a
/// reader can see what it was built from).
pub fn inputs(config: &Config, shape: Shape) -> Result<String, FactoryError> {
    let h = &config.hypervisor;
    let vmm = crate::hypervisor::hyper_vmm::resolve_binary(&h.path)?;
    Ok(format!(
        "format {KEY_FORMAT}\nkernel {}\nimage {}\nvmm {}\nvcpus {}\nmemory_mib {}\nnics {}\n\
         kernel_params {:?}\ndebug_console {}\nvirtio_fs_cache {}\n",
        identity("hypervisor.kernel", &h.kernel)?,
        identity("hypervisor.image", &h.image)?,
        identity("hypervisor.path", &vmm)?,
        shape.size.vcpus,
        shape.size.memory_mib,
        shape.nics,
        crate::sandbox::kernel_params(config),
        h.debug_console,
        h.virtio_fs_cache.as_str(),
    ))
}

/// The key of the template [`inputs`] describe: 16 hex digits of its SHA-256.
pub fn key(inputs: &str) -> String {
    let digest = Sha256::digest(inputs.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a template built from `old` inputs can never be used again: one of its
/// kernel, image or VMM files is at a path whose file `current` sees changed.
pub fn is_stale(old: &str, current: &str) -> bool {
    let now = input_files(current);
    input_files(old)
        .iter()
        .any(|(path, was)| now.iter().any(|(p, is)| p == path && is != was))
}

/// The files an [`inputs`] text names: (path, identity) of its kernel, image and VMM.
fn input_files(inputs: &str) -> Vec<(&str, &str)> {
    inputs
        .lines()
        .filter_map(|line| {
            let (what, rest) = line.split_once(' ')?;
            matches!(what, "kernel" | "image" | "vmm").then_some(())?;
            rest.rsplit_once(" dev=")
        })
        .collect()
}

/// A file as the key sees it: its path and what changes whenever it is rebuilt or
/// replaced (device, inode, size, modification and change times).
fn identity(what: &'static str, path: &Path) -> Result<String, FactoryError> {
    let m = std::fs::metadata(path).map_err(|cause| FactoryError::Input {
        what,
        path: path.to_path_buf(),
        cause,
    })?;
    Ok(format!(
        "{} dev={} ino={} size={} mtime={}.{:09} ctime={}.{:09}",
        path.display(),
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VirtioFsCache;
    use crate::sizing::VmSize;

    struct Files {
        _dir: tempfile::TempDir,
        config: Config,
    }

    fn files() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        for (name, slot) in [
            ("vmlinux", &mut config.hypervisor.kernel),
            ("initramfs", &mut config.hypervisor.image),
            ("hyper-vmm", &mut config.hypervisor.path),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, name).unwrap();
            *slot = p;
        }
        Files { _dir: dir, config }
    }

    const SHAPE: Shape = Shape {
        size: VmSize {
            vcpus: 1,
            memory_mib: 256,
        },
        nics: 0,
    };

    fn key_of(config: &Config, shape: Shape) -> String {
        key(&inputs(config, shape).unwrap())
    }

    #[test]
    fn the_same_inputs_give_the_same_key() {
        let f = files();
        assert_eq!(key_of(&f.config, SHAPE), key_of(&f.config, SHAPE));
        assert_eq!(key_of(&f.config, SHAPE).len(), 16);
    }

    #[test]
    fn every_input_changes_the_key() {
        let f = files();
        let base = key_of(&f.config, SHAPE);
        type Change = fn(&mut Config, &mut Shape);
        let cases: [(&str, Change); 9] = [
            ("vcpus", |_, s| s.size.vcpus = 2),
            ("memory", |_, s| s.size.memory_mib = 512),
            ("nics", |_, s| s.nics = 1),
            ("kernel_params", |c, _| {
                c.hypervisor.kernel_params = "x=1".into()
            }),
            ("debug_console", |c, _| c.hypervisor.debug_console = true),
            ("agent debug console", |c, _| c.agent.debug_console = true),
            ("cache", |c, _| {
                c.hypervisor.virtio_fs_cache = VirtioFsCache::Always
            }),
            ("kernel rebuilt", |c, _| {
                std::fs::write(&c.hypervisor.kernel, "a longer kernel").unwrap()
            }),
            ("vmm replaced", |c, _| {
                let p = c.hypervisor.path.clone();
                std::fs::remove_file(&p).unwrap();
                std::fs::write(&p, "hyper-vmm, rebuilt").unwrap();
            }),
        ];
        for (name, change) in cases {
            let f = files();
            let (mut config, mut shape) = (f.config.clone(), SHAPE);
            let before = key_of(&config, shape);
            change(&mut config, &mut shape);
            assert_ne!(key_of(&config, shape), before, "{name}");
        }
        assert_eq!(key_of(&f.config, SHAPE), base);
    }

    #[test]
    fn only_templates_of_changed_files_are_stale() {
        let f = files();
        let old = inputs(&f.config, SHAPE).unwrap();
        let bigger = Shape { nics: 1, ..SHAPE };
        assert!(!is_stale(&old, &old), "unchanged");
        assert!(
            !is_stale(&old, &inputs(&f.config, bigger).unwrap()),
            "another shape"
        );
        let other = files();
        assert!(
            !is_stale(&old, &inputs(&other.config, SHAPE).unwrap()),
            "other files"
        );
        std::fs::write(&f.config.hypervisor.image, "a rebuilt image").unwrap();
        assert!(
            is_stale(&old, &inputs(&f.config, bigger).unwrap()),
            "image rebuilt"
        );
    }

    #[test]
    fn a_missing_input_is_named() {
        let f = files();
        let mut config = f.config.clone();
        config.hypervisor.image = "/nonexistent/initramfs".into();
        let err = inputs(&config, SHAPE).unwrap_err().to_string();
        assert!(
            err.contains("hypervisor.image") && err.contains("/nonexistent/initramfs"),
            "{err}"
        );
    }
}
