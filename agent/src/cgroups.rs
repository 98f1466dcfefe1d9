//! cgroup v2, by writing the files: one cgroup per container under the agent's root
//! (`/sys/fs/cgroup/hyper` in the guest). OCI `linux.resources` are converted the way runc
//! converts them for v2.
use hyper_agent_protocol::agent;
use oci_spec::runtime::LinuxResources;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{field}: controller for {file} is not enabled in {cgroup}")]
    Controller {
        field: String,
        file: String,
        cgroup: PathBuf,
    },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Creates container cgroups under one root.
#[derive(Debug, Clone)]
pub struct Manager {
    root: Option<PathBuf>,
}

impl Manager {
    /// `root` is created if its parent is a cgroup2 mount; otherwise cgroups are off.
    pub fn new(root: &Path) -> Self {
        let parent = root.parent().unwrap_or(Path::new("/"));
        if !is_cgroup2(parent) {
            tracing::warn!(root = %root.display(), "no cgroup2 here: containers get no cgroup");
            return Self { root: None };
        }
        if let Err(e) = std::fs::create_dir_all(root) {
            tracing::warn!(root = %root.display(), "create cgroup root: {e}");
            return Self { root: None };
        }
        enable_controllers(root);
        Self {
            root: Some(root.to_path_buf()),
        }
    }

    /// A new, empty cgroup for `id` (an existing leftover is reused if empty).
    pub fn create(&self, id: &str) -> Result<Option<Cgroup>, CgroupError> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let path = root.join(id);
        std::fs::create_dir_all(&path).map_err(|source| CgroupError::Io {
            file: path.clone(),
            source,
        })?;
        Ok(Some(Cgroup { path }))
    }
}

/// Turns on, for children of `dir`, every controller `dir` has.
fn enable_controllers(dir: &Path) {
    let Ok(avail) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    for c in avail.split_whitespace() {
        if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
            tracing::warn!(dir = %dir.display(), controller = c, "enable controller: {e}");
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn parse_kv(s: &str) -> HashMap<String, u64> {
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

fn num(p: &Path) -> u64 {
    read(p).and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// "max" (no limit) reads as u64::MAX.
fn limit(p: &Path) -> u64 {
    match read(p) {
        Some(s) if s.trim() == "max" => u64::MAX,
        Some(s) => s.trim().parse().unwrap_or(0),
        None => 0,
    }
}

/// runc's mapping of cgroup v1 cpu shares [2, 262144] onto v2 weight [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// blkio weight [10, 1000] onto io.weight [1, 10000].
pub fn blkio_to_io_weight(w: u16) -> u64 {
    let w = (w as u64).clamp(10, 1000);
    1 + (w - 10) * 9999 / 990
}

/// The cgroup v2 files and values `res` asks for, with the OCI field each came from.
pub fn resource_writes(res: &LinuxResources) -> Result<Vec<(String, String, String)>, CgroupError> {
    let mut w: Vec<(String, String, String)> = Vec::new();
    let mut put = |field: &str, file: &str, v: String| w.push((field.into(), file.into(), v));
    let max_or = |v: i64| {
        if v < 0 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    if let Some(m) = res.memory() {
        if let Some(l) = m.limit()
            && l != 0
        {
            put("memory.limit", "memory.max", max_or(l));
        }
        if let Some(r) = m.reservation()
            && r != 0
        {
            put("memory.reservation", "memory.low", max_or(r));
        }
        if let Some(s) = m.swap()
            && s != 0
        {
            // OCI swap is memory+swap; v2 swap.max is swap alone.
            let v = match (s, m.limit()) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l > 0 => {
                    if s < l {
                        return Err(CgroupError::Invalid {
                            field: "memory.swap".into(),
                            reason: format!("{s} is below memory.limit {l}"),
                        });
                    }
                    (s - l).to_string()
                }
                (s, _) => s.to_string(),
            };
            put("memory.swap", "memory.swap.max", v);
        }
    }
    if let Some(c) = res.cpu() {
        if let Some(s) = c.shares()
            && s != 0
        {
            put("cpu.shares", "cpu.weight", shares_to_weight(s).to_string());
        }
        if c.quota().is_some() || c.period().is_some() {
            let quota = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            let period = c.period().filter(|p| *p > 0).unwrap_or(100_000);
            put("cpu.quota", "cpu.max", format!("{quota} {period}"));
        }
        if let Some(i) = c.idle() {
            put("cpu.idle", "cpu.idle", i.to_string());
        }
        if let Some(cpus) = c.cpus().as_ref().filter(|s| !s.is_empty()) {
            put("cpu.cpus", "cpuset.cpus", cpus.clone());
        }
        if let Some(mems) = c.mems().as_ref().filter(|s| !s.is_empty()) {
            put("cpu.mems", "cpuset.mems", mems.clone());
        }
    }
    if let Some(p) = res.pids() {
        put(
            "pids.limit",
            "pids.max",
            if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            },
        );
    }
    if let Some(b) = res.block_io() {
        if let Some(wt) = b.weight()
            && wt != 0
        {
            put(
                "blockIO.weight",
                "io.weight",
                format!("default {}", blkio_to_io_weight(wt)),
            );
        }
        for (key, list) in [
            ("rbps", b.throttle_read_bps_device()),
            ("wbps", b.throttle_write_bps_device()),
            ("riops", b.throttle_read_iops_device()),
            ("wiops", b.throttle_write_iops_device()),
        ] {
            for d in list.iter().flatten() {
                put(
                    "blockIO.throttle",
                    "io.max",
                    format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()),
                );
            }
        }
    }
    for h in res.hugepage_limits().iter().flatten() {
        let size = h.page_size();
        if !size.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CgroupError::Invalid {
                field: "hugepageLimits.pageSize".into(),
                reason: format!("{size:?}"),
            });
        }
        put(
            "hugepageLimits",
            &format!("hugetlb.{size}.max"),
            h.limit().to_string(),
        );
    }
    for (k, v) in res.unified().iter().flatten() {
        if k.contains('/') || k.starts_with('.') || k.is_empty() {
            return Err(CgroupError::Invalid {
                field: format!("unified.{k}"),
                reason: "not a cgroup file name".into(),
            });
        }
        put("unified", k, v.clone());
    }
    Ok(w)
}

impl Cgroup {
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    pub fn apply(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        for (field, file, value) in resource_writes(res)? {
            let p = self.path.join(&file);
            if !p.exists() {
                return Err(CgroupError::Controller {
                    field,
                    file,
                    cgroup: self.path.clone(),
                });
            }
            std::fs::write(&p, &value).map_err(|source| CgroupError::Io { file: p, source })?;
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<i32> {
        read(&self.procs_file())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn events(&self) -> HashMap<String, u64> {
        read(&self.path.join("cgroup.events"))
            .map(|s| parse_kv(&s))
            .unwrap_or_default()
    }

    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let f = self.path.join("cgroup.freeze");
        std::fs::write(&f, if frozen { "1" } else { "0" })
            .map_err(|source| CgroupError::Io { file: f, source })?;
        let want = u64::from(frozen);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.events().get("frozen").copied().unwrap_or(want) != want {
            if Instant::now() > deadline {
                return Err(CgroupError::Timeout(format!(
                    "frozen={want} in {}",
                    self.path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    pub fn oom_kills(&self) -> u64 {
        read(&self.path.join("memory.events"))
            .map(|s| parse_kv(&s).get("oom_kill").copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Kills what is left, waits for it to go, removes the directory.
    pub fn destroy(&self) {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            let _ = std::fs::write(&kill, "1");
        } else {
            for pid in self.pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    tracing::warn!(cgroup = %self.path.display(), "rmdir: {e}");
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    pub fn cpu_stats(&self) -> agent::CpuStats {
        let s = read(&self.path.join("cpu.stat"))
            .map(|s| parse_kv(&s))
            .unwrap_or_default();
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        agent::CpuStats {
            usage_usec: g("usage_usec"),
            user_usec: g("user_usec"),
            system_usec: g("system_usec"),
            nr_periods: g("nr_periods"),
            nr_throttled: g("nr_throttled"),
            throttled_usec: g("throttled_usec"),
            ..Default::default()
        }
    }

    pub fn memory_stats(&self) -> agent::MemoryStats {
        let p = &self.path;
        let ev = read(&p.join("memory.events"))
            .map(|s| parse_kv(&s))
            .unwrap_or_default();
        agent::MemoryStats {
            usage: num(&p.join("memory.current")),
            usage_limit: limit(&p.join("memory.max")),
            max_usage: num(&p.join("memory.peak")),
            swap_usage: num(&p.join("memory.swap.current")),
            swap_limit: limit(&p.join("memory.swap.max")),
            oom_events: ev.get("oom").copied().unwrap_or(0),
            oom_kill: ev.get("oom_kill").copied().unwrap_or(0),
            stat: read(&p.join("memory.stat"))
                .map(|s| parse_kv(&s))
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    pub fn pids_stats(&self) -> agent::PidsStats {
        let current = if self.path.join("pids.current").exists() {
            num(&self.path.join("pids.current"))
        } else {
            self.pids().len() as u64
        };
        agent::PidsStats {
            current,
            limit: limit(&self.path.join("pids.max")),
            ..Default::default()
        }
    }

    pub fn io_stats(&self) -> Vec<agent::IoEntry> {
        parse_io_stat(&read(&self.path.join("io.stat")).unwrap_or_default())
    }

    pub fn hugetlb_stats(&self) -> Vec<agent::HugetlbStats> {
        let Ok(rd) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut out: Vec<agent::HugetlbStats> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let size = name
                    .strip_prefix("hugetlb.")?
                    .strip_suffix(".current")?
                    .to_string();
                if size.contains('.') {
                    return None;
                }
                let f = |suffix: &str| self.path.join(format!("hugetlb.{size}.{suffix}"));
                let events = read(&f("events")).map(|s| parse_kv(&s)).unwrap_or_default();
                Some(agent::HugetlbStats {
                    current: num(&f("current")),
                    max: limit(&f("max")),
                    failcnt: events.get("max").copied().unwrap_or(0),
                    pagesize: size,
                    ..Default::default()
                })
            })
            .collect();
        out.sort_by(|a, b| a.pagesize.cmp(&b.pagesize));
        out
    }
}

pub fn parse_io_stat(s: &str) -> Vec<agent::IoEntry> {
    s.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (maj, min) = it.next()?.split_once(':')?;
            let mut e = agent::IoEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                ..Default::default()
            };
            for kv in it {
                let (k, v) = kv.split_once('=')?;
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(j: serde_json::Value) -> LinuxResources {
        serde_json::from_value(j).unwrap()
    }

    #[test]
    fn v2_conversion() {
        let w = resource_writes(&res(serde_json::json!({
            "memory": {"limit": 268435456, "reservation": 1048576, "swap": 536870912},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
            "pids": {"limit": 100},
            "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "unified": {"memory.high": "1000000"}
        })))
        .unwrap();
        let get = |f: &str| {
            w.iter()
                .find(|(_, file, _)| file == f)
                .map(|(_, _, v)| v.clone())
        };
        assert_eq!(get("memory.max").as_deref(), Some("268435456"));
        assert_eq!(get("memory.low").as_deref(), Some("1048576"));
        assert_eq!(get("memory.swap.max").as_deref(), Some("268435456"));
        assert_eq!(get("cpu.weight").as_deref(), Some("39"));
        assert_eq!(get("cpu.max").as_deref(), Some("50000 100000"));
        assert_eq!(get("cpuset.cpus").as_deref(), Some("0-1"));
        assert_eq!(get("pids.max").as_deref(), Some("100"));
        assert_eq!(get("io.weight").as_deref(), Some("default 4950"));
        assert_eq!(get("io.max").as_deref(), Some("8:0 rbps=1048576"));
        assert_eq!(get("hugetlb.2MB.max").as_deref(), Some("4194304"));
        assert_eq!(get("memory.high").as_deref(), Some("1000000"));
    }

    #[test]
    fn unlimited_and_bad_values() {
        let w = resource_writes(&res(serde_json::json!({
            "memory": {"limit": -1, "swap": -1}, "cpu": {"quota": -1}, "pids": {"limit": 0}
        })))
        .unwrap();
        assert!(w.contains(&("memory.limit".into(), "memory.max".into(), "max".into())));
        assert!(w.contains(&("memory.swap".into(), "memory.swap.max".into(), "max".into())));
        assert!(w.contains(&("cpu.quota".into(), "cpu.max".into(), "max 100000".into())));
        assert!(w.contains(&("pids.limit".into(), "pids.max".into(), "max".into())));
        let e = resource_writes(&res(
            serde_json::json!({"memory": {"limit": 100, "swap": 50}}),
        ))
        .unwrap_err();
        assert!(e.to_string().starts_with("memory.swap"), "{e}");
        let e = resource_writes(&res(serde_json::json!({"unified": {"../x": "1"}}))).unwrap_err();
        assert!(e.to_string().starts_with("unified"), "{e}");
    }

    #[test]
    fn weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
    }

    #[test]
    fn io_stat_parsing() {
        let e = parse_io_stat(
            "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n254:1 rbytes=5\n",
        );
        assert_eq!(e.len(), 2);
        assert_eq!(
            (
                e[0].major,
                e[0].minor,
                e[0].rbytes,
                e[0].wbytes,
                e[0].rios,
                e[0].wios
            ),
            (8, 0, 10, 20, 1, 2)
        );
        assert_eq!(e[1].rbytes, 5);
    }
}
