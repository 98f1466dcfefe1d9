//! Running a test's body in a child process (the test binary re-executed for that one
//! test), so a filter that kills the process kills only the child.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

/// Set in the child to the case it runs.
const CASE_VAR: &str = "HYPER_VMM_SECCOMP_CASE";

/// How a child ended, readable in an assertion message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signalled(i32),
}

impl From<ExitStatus> for Outcome {
    fn from(s: ExitStatus) -> Self {
        match (s.code(), s.signal()) {
            (Some(c), _) => Outcome::Exited(c),
            (None, Some(sig)) => Outcome::Signalled(sig),
            (None, None) => Outcome::Exited(-1),
        }
    }
}

/// A case: its name and what the child runs for it.
pub type Case = (&'static str, Box<dyn FnOnce()>);

/// Runs every case of test `test` (its full path, as `cargo test` prints it) in a child of
/// its own and returns how each ended, with its stderr. In such a child, runs that
/// child's case and exits 0 if it returns: this never comes back.
pub fn run_cases(test: &str, cases: Vec<Case>) -> Vec<(&'static str, Outcome, String)> {
    if let Ok(want) = std::env::var(CASE_VAR) {
        match cases.into_iter().find(|(name, _)| *name == want) {
            Some((_, body)) => {
                body();
                std::process::exit(0);
            }
            None => std::process::exit(99),
        }
    }
    cases
        .into_iter()
        .map(|(name, _)| {
            let out = Command::new(std::env::current_exe().expect("the test binary"))
                .args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(CASE_VAR, name)
                .output()
                .expect("re-run the test binary");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (name, out.status.into(), stderr)
        })
        .collect()
}

/// The one-case form of [`run_cases`].
pub fn in_child(test: &str, body: impl FnOnce() + 'static) -> (Outcome, String) {
    let (_, outcome, stderr) = run_cases(test, vec![("only", Box::new(body))])
        .pop()
        .expect("one case");
    (outcome, stderr)
}
