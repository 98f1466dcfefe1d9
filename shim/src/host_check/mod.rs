//! `hyperctl check`: can this host run hyper, and if not, why not and what to do.
//!
//! Each check gives one [`Finding`]: OK, WARN (works, but not as a cluster expects) or FAIL
//! (pods will not run), with what to do next. A check whose prerequisite failed is
//! skipped, saying which. The exit status is 1 when anything failed.
use std::fmt;

use crate::config::Config;

mod containerd;
mod guest;
mod host;
mod kvm;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        })
    }
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about a WARN or FAIL.
    pub fix: Option<String>,
}

impl Finding {
    pub fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    pub fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    pub fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            ..Self::fail(check, detail, fix)
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<5} {:<17} {}", self.status, self.check, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n{:23}-> {fix}", "")?;
        }
        Ok(())
    }
}

/// What the checks share: the config and what earlier checks measured.
pub struct Context<'a> {
    pub config: &'a Config,
    /// Where `containerd config dump` reads from (containerd's `--config`).
    pub containerd_config: Option<&'a std::path::Path>,
    done: Vec<Finding>,
}

struct Check {
    name: &'static str,
    /// Checks that must be OK (or WARN) for this one to mean anything.
    needs: &'static [&'static str],
}

const fn check(name: &'static str, needs: &'static [&'static str]) -> Check {
    Check { name, needs }
}

/// Every check, in the order they run (prerequisites first).
const CHECKS: &[Check] = &[
    check("root", &[]),
    check("kvm", &[]),
    check("vmm", &[]),
    check("kvm-guest-code", &["kvm", "vmm"]),
    check("cgroup2", &[]),
    check("overlayfs", &[]),
    check("tun", &[]),
    check("shim", &[]),
    check("containerd", &[]),
    check("containerd-config", &["containerd"]),
    check("guest-kernel", &[]),
    check("guest-image", &[]),
    check(
        "guest-boot",
        &[
            "root",
            "kvm-guest-code",
            "vmm",
            "guest-kernel",
            "guest-image",
        ],
    ),
];

async fn run_one(name: &'static str, cx: &mut Context<'_>) -> Finding {
    match name {
        "root" => host::root(),
        "kvm" => kvm::device(),
        "vmm" => kvm::vmm_binary(cx).await,
        "kvm-guest-code" => kvm::guest_code(cx).await,
        "cgroup2" => host::cgroup2(),
        "overlayfs" => host::overlayfs(),
        "tun" => host::tun(),
        "shim" => containerd::shim().await,
        "containerd" => containerd::version().await,
        "containerd-config" => containerd::config(cx).await,
        "guest-kernel" => guest::kernel(cx),
        "guest-image" => guest::image(cx),
        "guest-boot" => guest::boot(cx).await,
        other => unreachable!("check {other} is listed but not run"),
    }
}

/// The names `hyperctl check NAME...` accepts.
pub fn names() -> Vec<&'static str> {
    CHECKS.iter().map(|c| c.name).collect()
}

/// Runs the checks named in `only` (all when empty) and their prerequisites, in order;
/// `report` sees each finding as it comes (a boot takes a while).
pub async fn run(
    config: &Config,
    containerd_config: Option<&std::path::Path>,
    only: &[String],
    mut report: impl FnMut(&Finding),
) -> Result<Vec<Finding>, String> {
    let wanted = with_prerequisites(only)?;
    let mut cx = Context {
        config,
        containerd_config,
        done: Vec::new(),
    };
    for check in CHECKS.iter().filter(|c| wanted.contains(&c.name)) {
        let finding = match check.needs.iter().find(|n| !cx.passed(n)) {
            Some(failed) => Finding {
                check: check.name,
                status: Status::Skip,
                detail: format!("needs {failed}, which did not pass"),
                fix: None,
            },
            None => run_one(check.name, &mut cx).await,
        };
        report(&finding);
        cx.done.push(finding);
    }
    Ok(cx.done)
}

impl Context<'_> {
    fn passed(&self, name: &str) -> bool {
        self.done
            .iter()
            .any(|f| f.check == name && matches!(f.status, Status::Ok | Status::Warn))
    }
}

fn with_prerequisites(only: &[String]) -> Result<Vec<&'static str>, String> {
    if only.is_empty() {
        return Ok(names());
    }
    let mut wanted = Vec::new();
    let mut todo: Vec<&str> = only.iter().map(String::as_str).collect();
    while let Some(name) = todo.pop() {
        let check = CHECKS.iter().find(|c| c.name == name).ok_or_else(|| {
            format!(
                "no check named '{name}' (there are: {})",
                names().join(", ")
            )
        })?;
        if !wanted.contains(&check.name) {
            wanted.push(check.name);
            todo.extend(check.needs);
        }
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prerequisites_come_along_and_unknown_names_are_refused() {
        /// The names asked for, and the checks that run (sorted) or the error.
        type Case = (
            &'static [&'static str],
            Result<&'static [&'static str], &'static str>,
        );
        let cases: &[Case] = &[
            (&["tun"], Ok(&["tun"])),
            (&["kvm-guest-code"], Ok(&["kvm", "kvm-guest-code", "vmm"])),
            (
                &["guest-boot"],
                Ok(&[
                    "guest-boot",
                    "guest-image",
                    "guest-kernel",
                    "kvm",
                    "kvm-guest-code",
                    "root",
                    "vmm",
                ]),
            ),
            (&["kvm", "nope"], Err("no check named 'nope'")),
        ];
        for (only, want) in cases {
            let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
            let got = with_prerequisites(&only).map(|mut v| {
                v.sort();
                v
            });
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{only:?}"),
                (Err(e), Err(want)) => assert!(e.contains(want), "{only:?}: {e}"),
                (got, want) => panic!("{only:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn prerequisites_run_before_the_checks_that_need_them() {
        for (i, c) in CHECKS.iter().enumerate() {
            for need in c.needs {
                let at = CHECKS.iter().position(|d| d.name == *need);
                assert!(
                    at.is_some_and(|at| at < i),
                    "{} needs {need}, listed after it",
                    c.name
                );
            }
        }
    }

    #[test]
    fn a_finding_prints_its_fix_on_the_next_line() {
        let f = Finding::fail("tun", "/dev/net/tun is missing", "modprobe tun");
        assert_eq!(
            f.to_string(),
            format!(
                "FAIL  tun               /dev/net/tun is missing\n{:23}-> modprobe tun",
                ""
            )
        );
    }
}
