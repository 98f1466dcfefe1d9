//! The guest as a whole for the pod's metrics (the `GuestMetrics` call): memory from
//! `/proc/meminfo`, load from `/proc/loadavg`, CPU time from `/proc/stat`, uptime.
use hyper_agent_protocol::agent::{GuestCpuSeconds, GuestMetricsResponse};

use crate::error::{AgentError, Result};

/// Reads the guest's `/proc` now.
pub fn read() -> Result<GuestMetricsResponse> {
    let file = |path: &str| {
        std::fs::read_to_string(path).map_err(|e| AgentError::Internal(format!("{path}: {e}")))
    };
    let (load1, load5, load15, runnable, total) = parse_loadavg(&file("/proc/loadavg")?)
        .ok_or_else(|| AgentError::Internal("/proc/loadavg: unexpected format".into()))?;
    let cpu = parse_stat_cpu(&file("/proc/stat")?, clock_ticks())
        .ok_or_else(|| AgentError::Internal("/proc/stat: no cpu line".into()))?;
    let uptime_seconds = file("/proc/uptime")?
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| AgentError::Internal("/proc/uptime: unexpected format".into()))?;
    Ok(GuestMetricsResponse {
        meminfo_bytes: parse_meminfo(&file("/proc/meminfo")?),
        load1,
        load5,
        load15,
        tasks_runnable: runnable,
        tasks_total: total,
        cpu: Some(cpu).into(),
        uptime_seconds,
        ..Default::default()
    })
}

/// `MemTotal:  2048 kB` lines → bytes by name; lines without the kB unit (page counts)
/// are left out.
fn parse_meminfo(text: &str) -> std::collections::HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let kib: u64 = rest.trim().strip_suffix(" kB")?.trim().parse().ok()?;
            Some((name.to_string(), kib * 1024))
        })
        .collect()
}

/// The three load averages, runnable tasks and all tasks.
type LoadAvg = (f64, f64, f64, u64, u64);

/// `0.52 0.58 0.59 2/123 4567` → its [`LoadAvg`].
fn parse_loadavg(text: &str) -> Option<LoadAvg> {
    let mut f = text.split_whitespace();
    let mut load = || f.next()?.parse::<f64>().ok();
    let (l1, l5, l15) = (load()?, load()?, load()?);
    let (runnable, total) = f.next()?.split_once('/')?;
    Some((l1, l5, l15, runnable.parse().ok()?, total.parse().ok()?))
}

/// `/proc/stat`'s aggregate `cpu` line (in clock ticks) in seconds.
fn parse_stat_cpu(text: &str, ticks_per_second: f64) -> Option<GuestCpuSeconds> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<f64>().map(|t| t / ticks_per_second))
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    Some(GuestCpuSeconds {
        user: at(0),
        nice: at(1),
        system: at(2),
        idle: at(3),
        iowait: at(4),
        irq: at(5),
        softirq: at(6),
        steal: at(7),
        ..Default::default()
    })
}

/// Clock ticks per second, which `/proc/stat` counts in.
fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => n as f64,
        _ => 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_keeps_the_kib_fields_in_bytes() {
        let m = parse_meminfo(
            "MemTotal:        2014272 kB\nMemAvailable:     1818000 kB\nHugePages_Total:       0\nbad line\nDirectMap4k: x kB\n",
        );
        assert_eq!(m.get("MemTotal"), Some(&(2014272 * 1024)));
        assert_eq!(m.get("MemAvailable"), Some(&(1818000 * 1024)));
        assert_eq!(m.len(), 2, "{m:?}");
    }

    #[test]
    fn loadavg_lines() {
        let cases: &[(&str, Option<LoadAvg>)] = &[
            (
                "0.52 0.58 0.59 2/123 4567\n",
                Some((0.52, 0.58, 0.59, 2, 123)),
            ),
            ("0.00 0.01 0.05 1/40 99", Some((0.0, 0.01, 0.05, 1, 40))),
            ("0.52 0.58 0.59\n", None),
            ("a b c 1/2 3", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_loadavg(text), *want, "{text:?}");
        }
    }

    #[test]
    fn the_cpu_line_in_seconds() {
        let stat = "cpu  200 10 300 5000 40 0 6 0 0 0\ncpu0 200 10 300 5000 40 0 6 0 0 0\nintr 1\n";
        let c = parse_stat_cpu(stat, 100.0).unwrap();
        assert_eq!((c.user, c.nice, c.system, c.idle), (2.0, 0.1, 3.0, 50.0));
        assert_eq!((c.iowait, c.softirq, c.steal), (0.4, 0.06, 0.0));
        assert!(parse_stat_cpu("cpu0 1 2 3\n", 100.0).is_none());
        assert!(parse_stat_cpu("cpu  1 x 3\n", 100.0).is_none());
    }

    #[test]
    fn this_machine_is_readable() {
        let m = read().unwrap();
        assert!(m.meminfo_bytes["MemTotal"] > 0);
        assert!(m.tasks_total > 0 && m.uptime_seconds > 0.0);
    }
}
