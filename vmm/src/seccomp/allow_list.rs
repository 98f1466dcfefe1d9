//! An allow list: which syscalls a thread may make, some only with given arguments, and
//! its compilation into a BPF program whose default is to kill the process.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// A syscall: its number and its name (for reports and test messages).
pub type Syscall = (i64, &'static str);

/// `syscalls![SYS_read, SYS_write]`: the syscalls with their names.
macro_rules! syscalls {
    ($($nr:ident),* $(,)?) => {
        &[$((libc::$nr, stringify!($nr)),)*]
    };
}
pub(crate) use syscalls;

/// `sys!(SYS_ioctl)`: one syscall with its name.
macro_rules! sys {
    ($nr:ident) => {
        (libc::$nr, stringify!($nr))
    };
}
pub(crate) use sys;

enum Entry {
    /// Allowed whatever its arguments.
    Always,
    /// Allowed when one of these rules (each a conjunction of conditions) holds.
    When(Vec<SeccompRule>),
}

/// The syscalls one kind of thread may make.
#[derive(Default)]
pub struct AllowList {
    entries: BTreeMap<i64, (&'static str, Entry)>,
}

impl AllowList {
    /// Allows each of `syscalls` with any arguments.
    pub fn allow(mut self, syscalls: &[Syscall]) -> Self {
        for &(nr, name) in syscalls {
            self.entries.insert(nr, (name, Entry::Always));
        }
        self
    }

    /// Allows `syscall` when one of `rules` holds. Rules add up across calls; a syscall
    /// already allowed outright stays so.
    pub fn allow_when(mut self, (nr, name): Syscall, rules: Vec<SeccompRule>) -> Self {
        let entry = self
            .entries
            .entry(nr)
            .or_insert((name, Entry::When(Vec::new())));
        if let Entry::When(have) = &mut entry.1 {
            have.extend(rules);
        }
        self
    }

    /// How many distinct syscalls the list allows (some only with given arguments).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The allowed syscalls' names, `*` marking those allowed only with given arguments.
    pub fn names(&self) -> Vec<String> {
        self.entries
            .values()
            .map(|(name, e)| {
                let name = name.trim_start_matches("SYS_");
                match e {
                    Entry::Always => name.to_string(),
                    Entry::When(_) => format!("{name}*"),
                }
            })
            .collect()
    }

    pub fn allows(&self, nr: i64) -> bool {
        self.entries.contains_key(&nr)
    }

    /// The BPF program: allow what the list names, kill the process on anything else.
    pub fn compile(self) -> Result<BpfProgram, seccompiler::BackendError> {
        let rules = self
            .entries
            .into_iter()
            .map(|(nr, (_, e))| match e {
                Entry::Always => (nr, Vec::new()),
                Entry::When(rules) => (nr, rules),
            })
            .collect();
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            target_arch(),
        )?;
        filter.try_into()
    }
}

fn target_arch() -> TargetArch {
    #[cfg(target_arch = "x86_64")]
    return TargetArch::x86_64;
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
}

/// Argument `index` (its low 32 bits, as the kernel reads ints, fds and ioctl requests)
/// compared to `value`.
fn cond(index: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
        .expect("syscall argument indexes are below 6")
}

fn rule(conds: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conds).expect("a rule has at least one condition")
}

/// One rule per value: argument `index` is one of `values`.
pub fn arg_in(index: u8, values: &[u64]) -> Vec<SeccompRule> {
    values
        .iter()
        .map(|&v| rule(vec![cond(index, SeccompCmpOp::Eq, v)]))
        .collect()
}

/// Argument `index` has none of `bits` set.
pub fn arg_without(index: u8, bits: u64) -> Vec<SeccompRule> {
    vec![rule(vec![cond(index, SeccompCmpOp::MaskedEq(bits), 0)])]
}

/// Every (argument index, value) pair holds.
pub fn args_are(pairs: &[(u8, u64)]) -> Vec<SeccompRule> {
    vec![rule(
        pairs
            .iter()
            .map(|&(i, v)| cond(i, SeccompCmpOp::Eq, v))
            .collect(),
    )]
}
