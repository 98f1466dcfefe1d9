//! A host process's own numbers from `/proc/<pid>`: resident memory, CPU time, open
//! descriptors, threads (what Prometheus clients call `process_*`).

/// One process, read once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub threads: u64,
}

/// Reads process `pid`; `None` when it is gone (or not ours to read).
pub fn read(pid: u32) -> Option<ProcessStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let (ticks, threads) = parse_stat(&stat)?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcessStats {
        resident_bytes: pages * page_size(),
        cpu_seconds: ticks as f64 / clock_ticks(),
        open_fds,
        threads,
    })
}

/// Process `pid` and the processes it started, summed: a jailed VMM is two, the one the
/// shim started (which waits) and the VMM it forked into the jail's pid namespace.
/// (Memory the two share since the fork counts twice; the waiting one touches little.)
pub fn read_tree(pid: u32) -> Option<ProcessStats> {
    let mut total = read(pid)?;
    // Children are listed per thread; the forking is done by the main one. A child
    // that exits between the two reads is left out.
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    let children = children.unwrap_or_default();
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        if let Some(c) = read(child) {
            total.resident_bytes += c.resident_bytes;
            total.cpu_seconds += c.cpu_seconds;
            total.open_fds += c.open_fds;
            total.threads += c.threads;
        }
    }
    Some(total)
}

/// utime + stime (clock ticks) and the thread count from a `/proc/<pid>/stat` line. The
/// command name, in parentheses, may hold spaces and parentheses itself: fields are
/// counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3 (state); utime, stime are 14, 15; num_threads is 20.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)? + field(15)?, field(20)?))
}

/// A system value from sysconf, or `default` where it has none.
fn sysconf(var: nix::unistd::SysconfVar, default: i64) -> i64 {
    match nix::unistd::sysconf(var) {
        Ok(Some(n)) if n > 0 => n,
        _ => default,
    }
}

fn page_size() -> u64 {
    sysconf(nix::unistd::SysconfVar::PAGE_SIZE, 4096) as u64
}

fn clock_ticks() -> f64 {
    sysconf(nix::unistd::SysconfVar::CLK_TCK, 100) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        // (case, line, (CPU ticks, threads))
        let cases = [
            (
                "plain name",
                "42 (hyper-vmm) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 1234 0 0",
                Some((12, 3)),
            ),
            (
                "a name with spaces and parentheses",
                "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 70 30 0 0 20 0 9 0 1234 0 0",
                Some((100, 9)),
            ),
            ("cut short", "42 (x) S 1 42", None),
            ("no name", "42 x S 1", None),
        ];
        for (name, line, want) in cases {
            assert_eq!(parse_stat(line), want, "{name}");
        }
    }

    #[test]
    fn this_process() {
        let me = read(std::process::id()).unwrap();
        assert!(
            me.resident_bytes > 0 && me.threads >= 1 && me.open_fds >= 3,
            "{me:?}"
        );
        assert!(read(u32::MAX).is_none());
    }

    #[test]
    fn a_tree_adds_the_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let (me, kid) = (std::process::id(), child.id());
        let alone = read(me).unwrap();
        let sleep = read(kid).unwrap();
        let tree = read_tree(me).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        // Other tests' threads come and go, but the child's thread and memory are there.
        assert!(tree.threads > sleep.threads, "{tree:?} {sleep:?}");
        assert!(tree.resident_bytes >= sleep.resident_bytes + alone.resident_bytes / 2);
    }
}
