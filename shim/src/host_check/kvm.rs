//! /dev/kvm, the VMM binary, and whether KVM runs guest kernel code on the CPU.
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_vmm_api::KvmProbe;

use super::{Context, Finding};

/// The probe runs a second of guest code where KVM emulates it; allow for a loaded host.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
const KVM_API_VERSION: i32 = 12;

nix::ioctl_none!(kvm_get_api_version, 0xae, 0x00);

pub fn device() -> Finding {
    let kvm = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Finding::fail(
                "kvm",
                "/dev/kvm does not exist",
                "enable virtualization (VT-x/AMD-V) in the firmware and load kvm_intel or kvm_amd; in a cloud VM, pick an instance type with nested virtualization",
            );
        }
        Err(e) => {
            return Finding::fail(
                "kvm",
                format!("cannot open /dev/kvm read-write: {e}"),
                "run as root, or give this user the kvm group",
            );
        }
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a number.
    match unsafe { kvm_get_api_version(kvm.as_raw_fd()) } {
        Ok(KVM_API_VERSION) => Finding::ok("kvm", format!("/dev/kvm: KVM API {KVM_API_VERSION}")),
        Ok(v) => Finding::fail(
            "kvm",
            format!("/dev/kvm speaks KVM API {v}, hyper-vmm needs {KVM_API_VERSION}"),
            "use a Linux kernel from this decade",
        ),
        Err(e) => Finding::fail(
            "kvm",
            format!("/dev/kvm does not answer KVM_GET_API_VERSION: {e}"),
            "check that /dev/kvm is the KVM device (char 10:232)",
        ),
    }
}

/// `name` as `Command::new` would run it: a path as given, a bare name from PATH.
pub(super) fn resolve(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `program args`, gives its stdout, or an error saying what went wrong.
pub(super) async fn output(
    program: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<String, String> {
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| {
            format!(
                "{} {} did not finish in {timeout:?}",
                program.display(),
                args.join(" ")
            )
        })?
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} {} failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            err.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub async fn vmm_binary(cx: &Context<'_>) -> Finding {
    let configured = &cx.config.hypervisor.path;
    let Some(vmm) = resolve(configured) else {
        return Finding::fail(
            "vmm",
            format!(
                "hypervisor.path {} is not found (a bare name is looked up on PATH)",
                configured.display()
            ),
            "make install puts hyper-vmm in PREFIX/bin; set hypervisor.path to it",
        );
    };
    match output(&vmm, &["--version"], Duration::from_secs(10)).await {
        Ok(v) => same_version("vmm", &vmm, v.trim()),
        Err(e) => Finding::fail("vmm", e, "reinstall hyper-vmm (make install)"),
    }
}

/// OK when `banner` ("NAME VERSION") is this build's version.
pub(super) fn same_version(check: &'static str, path: &Path, banner: &str) -> Finding {
    let ours = env!("CARGO_PKG_VERSION");
    if banner.split_whitespace().any(|w| w == ours) {
        Finding::ok(check, format!("{} ({banner})", path.display()))
    } else {
        Finding::fail(
            check,
            format!(
                "{} says '{banner}', this hyperctl is {ours}",
                path.display()
            ),
            "install the shim, hyper-vmm and hyperctl from one build (make install)",
        )
    }
}

pub async fn guest_code(cx: &Context<'_>) -> Finding {
    let vmm = resolve(&cx.config.hypervisor.path).unwrap_or_default();
    let probe = match output(&vmm, &["--probe-kvm"], PROBE_TIMEOUT).await {
        Ok(out) => serde_json::from_str::<KvmProbe>(out.trim())
            .map_err(|e| format!("hyper-vmm --probe-kvm printed '{}': {e}", out.trim())),
        Err(e) => Err(e),
    };
    match &probe {
        Ok(p) => judge(p),
        Err(e) => Finding::fail(
            "kvm-guest-code",
            format!("cannot run a tiny guest: {e}"),
            "HYPER_VMM_LOG=debug hyper-vmm --probe-kvm says more",
        ),
    }
}

fn judge(p: &KvmProbe) -> Finding {
    let ns = p.ns_per_iteration();
    if p.emulates_kernel_mode() {
        Finding::fail(
            "kvm-guest-code",
            format!(
                "this KVM emulates guest kernel code: {ns:.0} ns per loop iteration at CPL0 where a CPU takes about 1; no Linux guest boots here"
            ),
            "run hyper on bare metal or in a VM whose host offers hardware nested virtualization (kvm_intel/kvm_amd nested=1); on hyper's build machines the nested test host stands in (tests/harness)",
        )
    } else {
        Finding::ok(
            "kvm-guest-code",
            format!("guest kernel code runs on the CPU ({ns:.1} ns per loop iteration at CPL0)"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_check::Status;

    #[test]
    fn versions_and_probes_are_judged() {
        let ours = env!("CARGO_PKG_VERSION");
        let p = Path::new("/usr/bin/hyper-vmm");
        assert_eq!(
            same_version("vmm", p, &format!("hyper-vmm {ours}")).status,
            Status::Ok
        );
        assert_eq!(
            same_version("vmm", p, "hyper-vmm 0.0.0-other").status,
            Status::Fail
        );
        let probe = |loop_ns| KvmProbe {
            api_version: 12,
            iterations: 1_000_000,
            loop_ns,
        };
        assert_eq!(judge(&probe(900_000)).status, Status::Ok);
        let emulated = judge(&probe(1_300_000_000));
        assert_eq!(emulated.status, Status::Fail);
        assert!(emulated.detail.contains("1300 ns"), "{emulated}");
    }

    #[test]
    fn resolve_finds_bare_names_on_path_and_takes_paths_as_given() {
        assert_eq!(resolve(Path::new("sh")).map(|p| p.is_file()), Some(true));
        assert_eq!(resolve(Path::new("/nonexistent/hyper-vmm")), None);
        assert_eq!(resolve(Path::new("no-such-program-here")), None);
    }
}
