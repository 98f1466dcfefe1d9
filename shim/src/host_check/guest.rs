//! The guest kernel and image the config names, and a real boot of them.
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_agent_protocol::{AGENT_VSOCK_PORT, PROTOCOL_VERSION};

use super::{Context, Finding};
use crate::agent::AgentTimeouts;
use crate::hypervisor::hyper_vmm::vsock_uds_in;
use crate::sandbox::{BootRequest, HyperVmmBackend, Sandbox};
use crate::sizing::VmSize;
use crate::startup_trace::StartupTrace;

/// The first bytes of the files, enough for every format we tell apart.
fn head(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; 0x210];
    let mut f = std::fs::File::open(path)?;
    let n = f.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

pub fn kernel(cx: &Context<'_>) -> Finding {
    let path = &cx.config.hypervisor.kernel;
    match head(path) {
        Ok(h) => judge_kernel(path, &h),
        Err(e) => Finding::fail(
            "guest-kernel",
            format!("hypervisor.kernel {}: {e}", path.display()),
            "make install puts the guest kernel in PREFIX/share/hyper; set hypervisor.kernel to it",
        ),
    }
}

fn judge_kernel(path: &Path, head: &[u8]) -> Finding {
    let elf = head.starts_with(b"\x7fELF");
    let bzimage = head.get(0x202..0x206) == Some(b"HdrS");
    if elf || bzimage {
        let kind = if elf { "ELF vmlinux" } else { "bzImage" };
        Finding::ok("guest-kernel", format!("{} ({kind})", path.display()))
    } else {
        Finding::fail(
            "guest-kernel",
            format!("{} is neither an ELF vmlinux nor a bzImage", path.display()),
            "point hypervisor.kernel at the vmlinux guest-kernel-config/build.sh builds",
        )
    }
}

pub fn image(cx: &Context<'_>) -> Finding {
    let path = &cx.config.hypervisor.image;
    match head(path) {
        Ok(h) if h.starts_with(&[0x1f, 0x8b]) || h.starts_with(b"070701") => {
            Finding::ok("guest-image", format!("{} (initramfs)", path.display()))
        }
        Ok(_) => Finding::fail(
            "guest-image",
            format!(
                "{} is neither a gzip'd nor a plain newc initramfs",
                path.display()
            ),
            "point hypervisor.image at the initramfs guest-kernel-config/image/build.sh builds",
        ),
        Err(e) => Finding::fail(
            "guest-image",
            format!("hypervisor.image {}: {e}", path.display()),
            "make install puts the guest image in PREFIX/share/hyper; set hypervisor.image to it",
        ),
    }
}

/// Boots the configured kernel and image as a pod would, asks the agent its version and
/// stops the VM.
pub async fn boot(cx: &Context<'_>) -> Finding {
    let mut config = cx.config.clone();
    // A check boots; a template would hide a kernel that no longer boots.
    config.factory.template = false;
    let id = format!("hyperctl-check-{}", std::process::id());
    let rootfs = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            return Finding::fail("guest-boot", format!("temporary dir: {e}"), "check $TMPDIR");
        }
    };
    let started = Instant::now();
    let (events, _unwatched) = tokio::sync::mpsc::unbounded_channel();
    let req = BootRequest {
        id: &id,
        trace: Arc::new(StartupTrace::for_shim(None)),
        hostname: "hyperctl-check",
        first_rootfs: rootfs.path(),
        size: VmSize {
            vcpus: config.hypervisor.vcpus,
            memory_mib: config.hypervisor.memory_mib,
        },
        cgroup: None,
        netns: None,
    };
    let backend = HyperVmmBackend::new(&config);
    let sandbox = match Sandbox::boot(&config, &backend, req, events).await {
        Ok(s) => s,
        Err(e) => {
            return Finding::fail(
                "guest-boot",
                format!("the guest did not boot: {e}"),
                "set hypervisor.debug_console = true and run again: the error then ends with the guest console",
            );
        }
    };
    let booted = started.elapsed();
    let version = ask_version(&sandbox.state_dir).await;
    sandbox.shutdown().await;
    match version {
        Ok((agent, protocol, kernel)) => judge_agent(booted, &agent, protocol, &kernel),
        Err(e) => Finding::fail(
            "guest-boot",
            e,
            "rebuild the guest image with this release's agent (make install)",
        ),
    }
}

async fn ask_version(state_dir: &Path) -> Result<(String, u32, String), String> {
    let uds = vsock_uds_in(state_dir);
    let agent = crate::agent::connect_with_retry(
        &uds,
        AGENT_VSOCK_PORT,
        Duration::from_secs(10),
        AgentTimeouts::default(),
    )
    .await
    .map_err(|e| format!("booted, but cannot reach the agent again: {e}"))?;
    let v = agent
        .version()
        .await
        .map_err(|e| format!("the agent does not answer Version: {e}"))?;
    Ok((v.agent_version, v.protocol_version, v.kernel_release))
}

fn judge_agent(booted: Duration, agent: &str, protocol: u32, kernel: &str) -> Finding {
    let ours = env!("CARGO_PKG_VERSION");
    if protocol != PROTOCOL_VERSION || agent != ours {
        return Finding::fail(
            "guest-boot",
            format!(
                "the guest image's agent is {agent} (protocol {protocol}); this shim is {ours} (protocol {PROTOCOL_VERSION})"
            ),
            "install the guest image built with this release (make install)",
        );
    }
    Finding::ok(
        "guest-boot",
        format!(
            "booted a VM to its agent in {} ms: kernel {kernel}, agent {agent}, protocol {protocol}",
            booted.as_millis()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_check::Status;

    #[test]
    fn kernels_are_told_apart_by_their_first_bytes() {
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let cases: [(&str, &[u8], Status); 4] = [
            ("elf", b"\x7fELF\x02\x01\x01", Status::Ok),
            ("bzImage", &bz, Status::Ok),
            ("text", b"not a kernel at all", Status::Fail),
            ("empty", b"", Status::Fail),
        ];
        for (name, head, want) in cases {
            assert_eq!(judge_kernel(Path::new("k"), head).status, want, "{name}");
        }
    }

    #[test]
    fn the_agent_must_speak_our_protocol_and_version() {
        let ours = env!("CARGO_PKG_VERSION");
        let t = Duration::from_millis(800);
        assert_eq!(
            judge_agent(t, ours, PROTOCOL_VERSION, "6.1-hyper").status,
            Status::Ok
        );
        assert_eq!(
            judge_agent(t, "0.0.1", PROTOCOL_VERSION, "k").status,
            Status::Fail
        );
        assert_eq!(
            judge_agent(t, ours, PROTOCOL_VERSION + 1, "k").status,
            Status::Fail
        );
    }
}
