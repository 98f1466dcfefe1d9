//! The shim binary containerd will run, containerd's version and its CRI config.
use std::path::Path;
use std::time::Duration;

use super::kvm::{output, resolve, same_version};
use super::{Context, Finding};

const SHIM: &str = "containerd-shim-hyper-v1";
/// The containerd releases hyper's suites run against.
const SUPPORTED: [(u32, u32); 2] = [(1, 6), (1, 7)];
const ASK: Duration = Duration::from_secs(10);

pub async fn shim() -> Finding {
    let Some(path) = resolve(Path::new(SHIM)) else {
        return Finding::fail(
            "shim",
            format!(
                "{SHIM} is not on PATH: containerd will not find runtime io.containerd.hyper.v1"
            ),
            "make install (PREFIX/bin must be on containerd's PATH)",
        );
    };
    match output(&path, &["-v"], ASK).await {
        Ok(out) => {
            let version = out
                .lines()
                .find_map(|l| l.trim().strip_prefix("Version:"))
                .map_or(String::new(), |v| v.trim().to_string());
            same_version("shim", &path, &format!("{SHIM} {version}"))
        }
        Err(e) => Finding::fail("shim", e, "reinstall the shim (make install)"),
    }
}

pub async fn version() -> Finding {
    let Some(containerd) = resolve(Path::new("containerd")) else {
        return Finding::fail(
            "containerd",
            "containerd is not on PATH",
            "install containerd 1.6 or 1.7 (Debian: apt install containerd)",
        );
    };
    match output(&containerd, &["--version"], ASK).await {
        Ok(out) => judge_version(out.trim()),
        Err(e) => Finding::fail("containerd", e, "reinstall containerd"),
    }
}

/// `containerd --version` prints "containerd github.com/containerd/containerd 1.6.20~ds1 …"
/// (or "v1.7.24 <commit>" from upstream builds).
fn parse_version(banner: &str) -> Option<(u32, u32, String)> {
    let word = banner.split_whitespace().nth(2)?;
    let v = word.strip_prefix('v').unwrap_or(word);
    let mut parts = v.split(['.', '~', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, v.to_string()))
}

fn judge_version(banner: &str) -> Finding {
    let supported = SUPPORTED.map(|(a, b)| format!("{a}.{b}")).join(", ");
    match parse_version(banner) {
        Some((major, minor, v)) if SUPPORTED.contains(&(major, minor)) => {
            Finding::ok("containerd", format!("containerd {v}"))
        }
        Some((_, _, v)) => Finding::warn(
            "containerd",
            format!("containerd {v} is not a release hyper is tested with ({supported})"),
            format!("use containerd {supported}; others may work but are untested"),
        ),
        None => Finding::warn(
            "containerd",
            format!("cannot read a version from '{banner}'"),
            format!("hyper is tested with containerd {supported}"),
        ),
    }
}

/// containerd's own default config file.
const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";

pub async fn config(cx: &Context<'_>) -> Finding {
    if cx.containerd_config.is_none() && !Path::new(DEFAULT_CONFIG).exists() {
        // containerd then runs on its built-in defaults, which know no hyper.
        let mut f = judge_config("");
        f.detail = format!("no {DEFAULT_CONFIG}: {}", f.detail);
        return f;
    }
    let containerd = resolve(Path::new("containerd")).unwrap_or_default();
    let mut args = Vec::new();
    let file = cx.containerd_config.map(|p| p.display().to_string());
    if let Some(f) = &file {
        args.extend(["--config", f.as_str()]);
    }
    args.extend(["config", "dump"]);
    match output(&containerd, &args, ASK).await {
        Ok(dump) => judge_config(&dump),
        Err(e) => Finding::fail(
            "containerd-config",
            e,
            "fix containerd's config file (containerd --config FILE config dump shows the error)",
        ),
    }
}

fn judge_config(dump: &str) -> Finding {
    let declares = dump.lines().any(|l| {
        let l = l.trim().replace(' ', "");
        l == "runtime_type=\"io.containerd.hyper.v1\""
    });
    if declares {
        Finding::ok(
            "containerd-config",
            "containerd's CRI declares runtime io.containerd.hyper.v1",
        )
    } else {
        Finding::warn(
            "containerd-config",
            "containerd's CRI has no runtime io.containerd.hyper.v1: Kubernetes pods with runtimeClassName hyper will fail (ctr run --runtime io.containerd.hyper.v1 works without it)",
            "merge the snippet make install prints (deploy/containerd-hyper.toml) into containerd's config and restart containerd",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_check::Status;

    #[test]
    fn containerd_versions() {
        let cases = [
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1",
                Status::Ok,
            ),
            (
                "containerd containerd.io v1.7.24 88bf19b2105c8b17560993bee28a01ddc2f97182",
                Status::Ok,
            ),
            (
                "containerd github.com/containerd/containerd/v2 v2.0.1 88c3d9b",
                Status::Warn,
            ),
            ("containerd", Status::Warn),
        ];
        for (banner, want) in cases {
            assert_eq!(judge_version(banner).status, want, "{banner}");
        }
    }

    #[test]
    fn the_cri_config_must_declare_the_runtime() {
        let with = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hyper]\n  runtime_type = \"io.containerd.hyper.v1\"\n";
        let without = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        assert_eq!(judge_config(with).status, Status::Ok);
        assert_eq!(judge_config(without).status, Status::Warn);
    }
}
