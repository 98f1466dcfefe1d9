//! OCI `linux.seccomp` → BPF programs, with seccompiler (pure Rust, no libseccomp).
//!
//! seccompiler filters have one action for matches and one for the rest, so a profile
//! becomes a stack of filters: one "listed → allow, unlisted → default action" filter plus
//! one "listed → its action, rest → allow" filter per other action. The kernel runs every
//! filter and keeps the most restrictive verdict, which gives the OCI meaning for profiles
//! like Docker's (default errno, allow lists). Syscall names this architecture does not
//! know are skipped, as libseccomp does.
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction as A, LinuxSeccompOperator as Op};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

/// A compiled program: (code, jt, jf, k) per instruction.
pub type Program = Vec<(u16, u8, u8, u32)>;

#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SeccompError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> SeccompError {
    SeccompError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn arch() -> seccompiler::TargetArch {
    std::env::consts::ARCH
        .try_into()
        .unwrap_or(seccompiler::TargetArch::x86_64)
}

/// seccompiler's JSON for an action.
fn action(field: &str, a: A, errno: Option<u32>) -> Result<serde_json::Value, SeccompError> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        A::ScmpActAllow => "allow".into(),
        A::ScmpActErrno => serde_json::json!({ "errno": errno }),
        A::ScmpActKill | A::ScmpActKillThread => "kill_thread".into(),
        A::ScmpActKillProcess => "kill_process".into(),
        A::ScmpActTrap => "trap".into(),
        A::ScmpActLog => "log".into(),
        A::ScmpActTrace => serde_json::json!({ "trace": errno }),
        A::ScmpActNotify => return Err(err(field, "SCMP_ACT_NOTIFY is not supported")),
    })
}

/// Whether seccompiler knows `name` on this architecture (cached).
fn known(name: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(k) = cache.lock().ok().and_then(|c| c.get(name).copied()) {
        return k;
    }
    let probe = serde_json::json!({"p": {"mismatch_action": "allow", "match_action": "trap",
        "filter": [{"syscall": name}]}});
    let k = seccompiler::compile_from_json(probe.to_string().as_bytes(), arch()).is_ok();
    if let Ok(mut c) = cache.lock() {
        c.insert(name.to_string(), k);
    }
    k
}

/// One syscall's rules in one filter: None = unconditional.
type Rules = BTreeMap<String, Option<Vec<serde_json::Value>>>;

fn add_rule(rules: &mut Rules, name: &str, cond: Option<serde_json::Value>) {
    match (rules.get_mut(name), cond) {
        (Some(None), _) => {}
        (Some(slot), None) => *slot = None,
        (Some(Some(v)), Some(c)) => v.push(c),
        (None, c) => {
            rules.insert(name.to_string(), c.map(|c| vec![c]));
        }
    }
}

fn to_filter(
    rules: &Rules,
    mismatch: &serde_json::Value,
    matched: &serde_json::Value,
) -> serde_json::Value {
    let mut list = Vec::new();
    for (name, conds) in rules {
        match conds {
            None => list.push(serde_json::json!({ "syscall": name })),
            Some(cs) => {
                for c in cs {
                    list.push(serde_json::json!({ "syscall": name, "args": c }));
                }
            }
        }
    }
    serde_json::json!({ "mismatch_action": mismatch, "match_action": matched, "filter": list })
}

/// Compiles the profile; errors name the offending field under `linux.seccomp`.
pub fn compile(s: &LinuxSeccomp) -> Result<Vec<Program>, SeccompError> {
    let f = "linux.seccomp";
    let default = action(
        &format!("{f}.defaultAction"),
        s.default_action(),
        s.default_errno_ret(),
    )?;
    let allow = serde_json::json!("allow");
    // Rules per action (keyed by the action's JSON), and every listed rule for the default filter.
    let mut by_action: BTreeMap<String, (serde_json::Value, Rules)> = BTreeMap::new();
    let mut listed = Rules::new();
    for (i, sc) in s.syscalls().as_deref().unwrap_or(&[]).iter().enumerate() {
        let field = format!("{f}.syscalls[{i}]");
        let act = action(&format!("{field}.action"), sc.action(), sc.errno_ret())?;
        let mut cond = Vec::new();
        for (j, a) in sc.args().as_deref().unwrap_or(&[]).iter().enumerate() {
            if a.index() > 5 {
                return Err(err(format!("{field}.args[{j}].index"), "above 5"));
            }
            let (op, val) = match a.op() {
                Op::ScmpCmpNe => (serde_json::json!("ne"), a.value()),
                Op::ScmpCmpLt => ("lt".into(), a.value()),
                Op::ScmpCmpLe => ("le".into(), a.value()),
                Op::ScmpCmpEq => ("eq".into(), a.value()),
                Op::ScmpCmpGe => ("ge".into(), a.value()),
                Op::ScmpCmpGt => ("gt".into(), a.value()),
                // libseccomp: (arg & value) == valueTwo.
                Op::ScmpCmpMaskedEq => (
                    serde_json::json!({ "masked_eq": a.value() }),
                    a.value_two().unwrap_or(0),
                ),
            };
            cond.push(
                serde_json::json!({"index": a.index(), "type": "qword", "op": op, "val": val}),
            );
        }
        let cond = (!cond.is_empty()).then_some(serde_json::Value::Array(cond));
        for name in sc.names() {
            if !known(name) {
                tracing::debug!(syscall = %name, "seccomp: unknown syscall skipped");
                continue;
            }
            add_rule(&mut listed, name, cond.clone());
            if act != allow {
                let e = by_action
                    .entry(act.to_string())
                    .or_insert_with(|| (act.clone(), Rules::new()));
                add_rule(&mut e.1, name, cond.clone());
            }
        }
    }
    let mut filters = serde_json::Map::new();
    if default != allow {
        filters.insert("0-default".into(), to_filter(&listed, &default, &allow));
    }
    for (i, (_, (act, rules))) in by_action.iter().enumerate() {
        if !rules.is_empty() {
            filters.insert(format!("{}-action", i + 1), to_filter(rules, &allow, act));
        }
    }
    let json = serde_json::Value::Object(filters).to_string();
    let map = seccompiler::compile_from_json(json.as_bytes(), arch())
        .map_err(|e| err(f, format!("cannot compile: {e}")))?;
    let mut names: Vec<_> = map.keys().cloned().collect();
    names.sort();
    Ok(names
        .iter()
        .map(|n| map[n].iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
        .collect())
}

/// Installs compiled programs on the calling thread (the helper before exec).
pub fn install(programs: &[Program]) -> std::io::Result<()> {
    for p in programs {
        let bpf: seccompiler::BpfProgram = p
            .iter()
            .map(|&(code, jt, jf, k)| seccompiler::sock_filter { code, jt, jf, k })
            .collect();
        seccompiler::apply_filter(&bpf).map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(j: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(j).unwrap()
    }

    #[test]
    fn docker_like_profile_compiles() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["read", "write", "exit_group", "no_such_syscall_xyz"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        }));
        let progs = compile(&p).unwrap();
        assert_eq!(progs.len(), 2, "default filter plus one errno filter");
        assert!(progs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn allow_default_needs_no_default_filter() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
        }));
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    #[test]
    fn bad_profiles_name_the_field() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        assert!(
            compile(&p)
                .unwrap_err()
                .to_string()
                .starts_with("linux.seccomp.syscalls[0].action")
        );
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]
        }));
        assert!(
            compile(&p)
                .unwrap_err()
                .to_string()
                .starts_with("linux.seccomp.syscalls[0].args[0].index")
        );
    }

    #[test]
    fn unconditional_rule_wins_over_conditional() {
        let mut r = Rules::new();
        add_rule(&mut r, "x", Some(serde_json::json!([1])));
        add_rule(&mut r, "x", None);
        add_rule(&mut r, "x", Some(serde_json::json!([2])));
        assert_eq!(r["x"], None);
    }
}
