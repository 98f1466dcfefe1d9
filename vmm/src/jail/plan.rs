//! What the jail's root holds, derived from the config alone: one bind per file or
//! directory the VMM opens, each at its host path. Pure, so it is checked by table.

use std::path::{Component, Path, PathBuf};

use super::JailError;
use crate::config::{SerialOutputConfig, VmConfig};

/// The KVM device every VM opens.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// One host path bind-mounted into the jail at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub path: PathBuf,
    /// What the config names it as, for errors.
    pub what: &'static str,
    pub writable: bool,
    /// Submounts come along, and mounts the host adds under it later reach the jail (a
    /// share: the shim binds each container's rootfs into it while the VM runs).
    pub recursive: bool,
    /// Created (empty) on the host first if missing: an output the VMM would create.
    pub create: bool,
}

impl Bind {
    fn new(what: &'static str, path: &Path) -> Self {
        Bind {
            path: path.to_path_buf(),
            what,
            writable: false,
            recursive: false,
            create: false,
        }
    }
    fn writable(mut self) -> Self {
        self.writable = true;
        self
    }
}

fn bad(what: &str, path: &Path, why: &str) -> JailError {
    JailError::Config(format!("{what} {}: {why}", path.display()))
}

/// The binds for `cfg` jailed under `root`, parents before children (a parent bound later
/// would hide them), one per path.
pub fn binds(cfg: &VmConfig, root: &Path) -> Result<Vec<Bind>, JailError> {
    if let Some(tap) = cfg.net.iter().find_map(|n| n.tap.as_ref()) {
        return Err(JailError::Config(format!(
            "net tap={tap}: a jailed VMM has a network namespace of its own, where host taps \
             do not exist; open the tap and pass it as fd=N"
        )));
    }
    check_path("jail root", root)?;
    let mut want = vec![Bind::new("kernel", &cfg.kernel)];
    if let Some(initrd) = &cfg.initrd {
        want.push(Bind::new("initrd", initrd));
    }
    for b in &cfg.block {
        let mut bind = Bind::new("block", &b.path);
        bind.writable = !b.read_only;
        want.push(bind);
    }
    for f in &cfg.fs {
        let mut bind = Bind::new("share", &f.shared_dir).writable();
        bind.recursive = true;
        want.push(bind);
    }
    // The VMM binds these sockets, and connects to `<uds>_<port>` beside the vsock one.
    let sockets = [
        ("vsock.uds", cfg.vsock.as_ref().map(|v| &v.uds)),
        ("api_socket", cfg.api_socket.as_ref()),
    ];
    for (what, socket) in sockets {
        if let Some(socket) = socket {
            check_path(what, socket)?;
            let dir = socket.parent().unwrap_or(Path::new("/"));
            want.push(Bind::new(what, dir).writable());
        }
    }
    if let SerialOutputConfig::File(p) = &cfg.serial {
        let mut bind = Bind::new("serial", p).writable();
        bind.create = true;
        want.push(bind);
    }
    want.push(Bind::new("KVM device", Path::new(KVM_DEVICE)).writable());

    let mut out: Vec<Bind> = Vec::with_capacity(want.len());
    for b in want {
        check_path(b.what, &b.path)?;
        if b.path == Path::new("/") {
            return Err(bad(
                b.what,
                &b.path,
                "the whole host cannot go into the jail",
            ));
        }
        if b.path.starts_with(root) {
            return Err(bad(b.what, &b.path, "is inside the jail root"));
        }
        if b.recursive && root.starts_with(&b.path) {
            return Err(bad(b.what, &b.path, "holds the jail root"));
        }
        match out.iter_mut().find(|o| o.path == b.path) {
            Some(o) => {
                o.writable |= b.writable;
                o.recursive |= b.recursive;
                o.create |= b.create;
            }
            None => out.push(b),
        }
    }
    out.sort_by_key(|b| b.path.components().count());
    Ok(out)
}

/// Paths must mean the same inside the jail as outside: absolute, without `..`.
fn check_path(what: &str, path: &Path) -> Result<(), JailError> {
    if !path.is_absolute() {
        return Err(bad(what, path, "must be an absolute path in a jail"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(bad(what, path, "must not contain `..` in a jail"));
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(bad(what, path, "contains a NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BlockConfig, FsConfig, NetConfig, VsockConfig};

    const ROOT: &str = "/run/hyper/p1/root";

    fn base() -> VmConfig {
        VmConfig::new("/k/vmlinux".into())
    }

    /// (path, writable, recursive, create) of one bind.
    type Summary = (String, bool, bool, bool);
    type Edit = Box<dyn Fn(&mut VmConfig)>;

    /// Every bind's summary, in order.
    fn summary(cfg: &VmConfig) -> Vec<Summary> {
        binds(cfg, Path::new(ROOT))
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|b| {
                (
                    b.path.display().to_string(),
                    b.writable,
                    b.recursive,
                    b.create,
                )
            })
            .collect()
    }

    fn kvm() -> Summary {
        (KVM_DEVICE.into(), true, false, false)
    }

    fn ro(p: &str) -> Summary {
        (p.into(), false, false, false)
    }

    fn rw(p: &str) -> Summary {
        (p.into(), true, false, false)
    }

    #[test]
    fn each_config_gets_exactly_its_binds() {
        let shim_like = {
            let mut c = base();
            c.initrd = Some("/k/initrd".into());
            c.serial = SerialOutputConfig::File("/run/hyper/p1/console.log".into());
            c.vsock = Some(VsockConfig {
                uds: "/run/hyper/p1/vsock.sock".into(),
                cid: 3,
            });
            c.api_socket = Some("/run/hyper/p1/vmm.sock".into());
            c.block.push(BlockConfig {
                path: "/img/ro.img".into(),
                read_only: true,
                serial: None,
            });
            c.block.push(BlockConfig {
                path: "/dev/vdb".into(),
                read_only: false,
                serial: None,
            });
            c.fs.push(FsConfig {
                tag: "s".into(),
                shared_dir: "/var/lib/hyper/p1/share".into(),
                cache: Default::default(),
                writeback: false,
                xattr: true,
            });
            c.net.push(NetConfig {
                tap: None,
                fd: Some(7),
                mac: None,
            });
            c
        };
        let cases: Vec<(&str, VmConfig, Vec<Summary>)> = vec![
            ("kernel only", base(), vec![ro("/k/vmlinux"), kvm()]),
            (
                "stdout serial binds nothing",
                {
                    let mut c = base();
                    c.serial = SerialOutputConfig::Stdout;
                    c
                },
                vec![ro("/k/vmlinux"), kvm()],
            ),
            (
                "the shim's config: one socket dir for both sockets, under it the console",
                shim_like,
                vec![
                    ro("/k/vmlinux"),
                    ro("/k/initrd"),
                    ro("/img/ro.img"),
                    rw("/dev/vdb"),
                    kvm(),
                    rw("/run/hyper/p1"),
                    ("/run/hyper/p1/console.log".into(), true, false, true),
                    ("/var/lib/hyper/p1/share".into(), true, true, false),
                ],
            ),
            (
                "a file named twice is bound once, writable if either wants it",
                {
                    let mut c = base();
                    for read_only in [true, false] {
                        c.block.push(BlockConfig {
                            path: "/img/d.img".into(),
                            read_only,
                            serial: None,
                        });
                    }
                    c
                },
                vec![ro("/k/vmlinux"), rw("/img/d.img"), kvm()],
            ),
        ];
        for (name, cfg, want) in cases {
            assert_eq!(summary(&cfg), want, "case {name:?}");
        }
    }

    #[test]
    fn configs_a_jail_cannot_serve_are_refused_by_name() {
        let cases: Vec<(&str, Edit, &str)> = vec![
            (
                "a tap by name",
                Box::new(|c| {
                    c.net.push(NetConfig {
                        tap: Some("tap0".into()),
                        fd: None,
                        mac: None,
                    })
                }),
                "pass it as fd=N",
            ),
            (
                "a relative kernel",
                Box::new(|c| c.kernel = "vmlinux".into()),
                "kernel vmlinux: must be an absolute path",
            ),
            (
                "a relative socket",
                Box::new(|c| c.api_socket = Some("api.sock".into())),
                "api_socket api.sock: must be an absolute path",
            ),
            (
                "dot-dot",
                Box::new(|c| c.initrd = Some("/k/../etc/shadow".into())),
                "must not contain `..`",
            ),
            (
                "a socket in /",
                Box::new(|c| c.api_socket = Some("/api.sock".into())),
                "api_socket /: the whole host",
            ),
            (
                "a file under the root",
                Box::new(|c| c.kernel = format!("{ROOT}/vmlinux").into()),
                "is inside the jail root",
            ),
            (
                "a share holding the root",
                Box::new(|c| {
                    c.fs.push(FsConfig {
                        tag: "s".into(),
                        shared_dir: "/run/hyper".into(),
                        cache: Default::default(),
                        writeback: false,
                        xattr: true,
                    })
                }),
                "share /run/hyper: holds the jail root",
            ),
        ];
        for (name, edit, want) in cases {
            let mut c = base();
            edit(&mut c);
            let e = binds(&c, Path::new(ROOT)).expect_err(name).to_string();
            assert!(e.contains(want), "case {name:?}: {e}");
        }
        let e = binds(&base(), Path::new("root")).unwrap_err().to_string();
        assert!(e.contains("jail root root: must be an absolute"), "{e}");
    }
}
