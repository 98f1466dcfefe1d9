//! One pod's metrics as Prometheus text: what the shim read from each source at one
//! scrape ([`PodSnapshot`]), rendered with every sample labelled `pod="…"`.
//!
//! The guest and the VMM are untrusted: their numbers are shown as they came, but what
//! names a series (meminfo fields, interface names) is bounded in count and length,
//! non-finite floats are left out, and label values are escaped by the writer.
use hyper_agent_protocol::agent::{GuestMetricsResponse, NetworkStats, StatsContainerResponse};
use hyper_vmm_api::Exposition;

use super::process::ProcessStats;
use crate::hypervisor::VmmMetrics;

/// At most this many meminfo fields or interfaces from the guest make series.
const MAX_GUEST_NAMES: usize = 64;
/// Longest name from the guest that makes a series.
const MAX_GUEST_NAME_LEN: usize = 32;

/// What one scrape found; a source that did not answer says why.
#[derive(Debug, Default)]
pub struct PodSnapshot {
    pub pod: String,
    pub shim: Option<ProcessStats>,
    pub vmm_process: Option<ProcessStats>,
    pub vmm: Option<Result<VmmMetrics, String>>,
    pub guest: Option<Result<GuestMetricsResponse, String>>,
    /// By container id, in the pod's order.
    pub containers: Vec<(String, StatsContainerResponse)>,
    /// Start-up steps that happened: seconds since containerd spawned the shim.
    pub startup: Vec<(&'static str, f64)>,
}

impl PodSnapshot {
    /// The Prometheus text of this scrape.
    pub fn render(&self) -> String {
        let mut page = Exposition::new(&[("pod", &self.pod)]);
        self.sources(&mut page);
        self.processes(&mut page);
        if let Some(Ok(m)) = &self.vmm {
            m.write_prometheus(&mut page);
        }
        if let Some(Ok(g)) = &self.guest {
            guest(&mut page, g);
        }
        containers(&mut page, &self.containers);
        let mut f = page.family(
            "hyper_startup_step_seconds",
            "gauge",
            "When each start-up step happened, in seconds since containerd spawned the shim.",
        );
        for (step, s) in &self.startup {
            f.sample(&[("step", step)], s);
        }
        let mut f = page.family(
            "hyper_startup_step_duration_seconds",
            "gauge",
            "How long each start-up step took: from the step before it that happened.",
        );
        let mut before = 0.0;
        for (step, s) in &self.startup {
            f.sample(&[("step", step)], (s - before).max(0.0));
            before = *s;
        }
        page.finish()
    }

    fn sources(&self, page: &mut Exposition) {
        let mut f = page.family(
            "hyper_metrics_source_up",
            "gauge",
            "1 when the source answered this scrape: vmm (its control socket), agent (the guest).",
        );
        let up = |r: Option<bool>| u8::from(r.unwrap_or(false));
        let vmm = self.vmm.as_ref().map(|r| r.is_ok());
        let agent = self.guest.as_ref().map(|r| r.is_ok());
        f.sample(&[("source", "vmm")], up(vmm));
        f.sample(&[("source", "agent")], up(agent));
    }

    fn processes(&self, page: &mut Exposition) {
        let procs: Vec<(&str, &ProcessStats)> = [("shim", &self.shim), ("vmm", &self.vmm_process)]
            .into_iter()
            .filter_map(|(name, s)| Some((name, s.as_ref()?)))
            .collect();
        type Field = fn(&ProcessStats) -> f64;
        let fields: [(&str, &str, &str, Field); 4] = [
            (
                "hyper_process_resident_memory_bytes",
                "gauge",
                "Resident memory of the pod's host processes.",
                |p| p.resident_bytes as f64,
            ),
            (
                "hyper_process_cpu_seconds_total",
                "counter",
                "User and system CPU time of the pod's host processes.",
                |p| p.cpu_seconds,
            ),
            (
                "hyper_process_open_fds",
                "gauge",
                "Open file descriptors of the pod's host processes.",
                |p| p.open_fds as f64,
            ),
            (
                "hyper_process_threads",
                "gauge",
                "Threads of the pod's host processes.",
                |p| p.threads as f64,
            ),
        ];
        for (name, kind, help, get) in fields {
            let mut f = page.family(name, kind, help);
            for (process, s) in &procs {
                f.sample(&[("process", process)], get(s));
            }
        }
    }
}

/// A name from the guest fit to name a series: short, plain ASCII.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_GUEST_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.()".contains(&b))
}

/// A float from the guest that the format can carry as a plain number.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn guest(page: &mut Exposition, g: &GuestMetricsResponse) {
    let mut items: Vec<(&String, &u64)> = g
        .meminfo_bytes
        .iter()
        .filter(|(k, _)| plain_name(k))
        .collect();
    items.sort();
    items.truncate(MAX_GUEST_NAMES);
    let mut f = page.family(
        "hyper_guest_meminfo_bytes",
        "gauge",
        "The guest's /proc/meminfo, by field.",
    );
    for (item, bytes) in items {
        f.sample(&[("item", item)], bytes);
    }
    for (name, help, v) in [
        (
            "hyper_guest_load1",
            "The guest's 1-minute load average.",
            g.load1,
        ),
        (
            "hyper_guest_load5",
            "The guest's 5-minute load average.",
            g.load5,
        ),
        (
            "hyper_guest_load15",
            "The guest's 15-minute load average.",
            g.load15,
        ),
        (
            "hyper_guest_uptime_seconds",
            "Seconds since the guest kernel booted.",
            g.uptime_seconds,
        ),
    ] {
        if let Some(v) = finite(v) {
            page.single(name, "gauge", help, v);
        }
    }
    let mut f = page.family(
        "hyper_guest_tasks",
        "gauge",
        "The guest's tasks (threads): runnable now, and all.",
    );
    f.sample(&[("state", "runnable")], g.tasks_runnable);
    f.sample(&[("state", "total")], g.tasks_total);
    if let Some(c) = g.cpu.as_ref() {
        let mut f = page.family(
            "hyper_guest_cpu_seconds_total",
            "counter",
            "The guest's CPU time by mode, all vCPUs summed.",
        );
        for (mode, v) in [
            ("user", c.user),
            ("nice", c.nice),
            ("system", c.system),
            ("idle", c.idle),
            ("iowait", c.iowait),
            ("irq", c.irq),
            ("softirq", c.softirq),
            ("steal", c.steal),
        ] {
            if let Some(v) = finite(v) {
                f.sample(&[("mode", mode)], v);
            }
        }
    }
}

/// One value of a container's stats; `None` when the agent did not report it.
type ContainerField = fn(&StatsContainerResponse) -> Option<f64>;

fn usec(v: u64) -> f64 {
    v as f64 / 1e6
}

/// One byte count summed over the guest interfaces fit to be counted.
fn network_bytes(s: &StatsContainerResponse, bytes: fn(&NetworkStats) -> u64) -> f64 {
    let named = s.network.iter().filter(|n| plain_name(&n.name));
    named.take(MAX_GUEST_NAMES).map(|n| bytes(n) as f64).sum()
}

fn containers(page: &mut Exposition, containers: &[(String, StatsContainerResponse)]) {
    let fields: [(&str, &str, &str, ContainerField); 10] = [
        (
            "hyper_container_cpu_usage_seconds_total",
            "counter",
            "CPU time of the container's cgroup in the guest.",
            |s| Some(usec(s.cpu.as_ref()?.usage_usec)),
        ),
        (
            "hyper_container_cpu_throttled_seconds_total",
            "counter",
            "Time the container's cgroup was throttled by its CPU limit.",
            |s| Some(usec(s.cpu.as_ref()?.throttled_usec)),
        ),
        (
            "hyper_container_memory_usage_bytes",
            "gauge",
            "Memory the container's cgroup uses (memory.current).",
            |s| Some(s.memory.as_ref()?.usage as f64),
        ),
        (
            "hyper_container_memory_limit_bytes",
            "gauge",
            "The container's memory limit (memory.max); absent when it has none.",
            |s| {
                let limit = s.memory.as_ref()?.usage_limit;
                (limit != 0 && limit != u64::MAX).then_some(limit as f64)
            },
        ),
        (
            "hyper_container_oom_kills_total",
            "counter",
            "Processes of the container killed for lack of memory.",
            |s| Some(s.memory.as_ref()?.oom_kill as f64),
        ),
        (
            "hyper_container_pids",
            "gauge",
            "Processes and threads in the container's cgroup.",
            |s| Some(s.pids.as_ref()?.current as f64),
        ),
        (
            "hyper_container_io_read_bytes_total",
            "counter",
            "Bytes the container read from block devices.",
            |s| Some(s.io.iter().map(|e| e.rbytes as f64).sum()),
        ),
        (
            "hyper_container_io_write_bytes_total",
            "counter",
            "Bytes the container wrote to block devices.",
            |s| Some(s.io.iter().map(|e| e.wbytes as f64).sum()),
        ),
        (
            "hyper_container_network_rx_bytes_total",
            "counter",
            "Bytes the pod's guest interfaces received.",
            |s| Some(network_bytes(s, |n| n.rx_bytes)),
        ),
        (
            "hyper_container_network_tx_bytes_total",
            "counter",
            "Bytes the pod's guest interfaces sent.",
            |s| Some(network_bytes(s, |n| n.tx_bytes)),
        ),
    ];
    for (name, kind, help, get) in fields {
        let mut f = page.family(name, kind, help);
        for (id, stats) in containers {
            if let Some(v) = get(stats) {
                f.sample(&[("container", id)], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_agent_protocol::agent::{CpuStats, GuestCpuSeconds, MemoryStats};

    fn snapshot() -> PodSnapshot {
        let mut guest = GuestMetricsResponse {
            load1: 0.5,
            load5: f64::NAN,
            load15: f64::INFINITY,
            tasks_runnable: 2,
            tasks_total: 40,
            uptime_seconds: 12.5,
            cpu: Some(GuestCpuSeconds {
                user: 1.25,
                idle: f64::NEG_INFINITY,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        for (k, v) in [
            ("MemTotal", 1 << 30),
            ("Mem\"Free", 1),
            ("x\ny", 2),
            (&"L".repeat(33)[..], 3),
        ] {
            guest.meminfo_bytes.insert(k.to_string(), v);
        }
        let stats = StatsContainerResponse {
            cpu: Some(CpuStats {
                usage_usec: 2_500_000,
                ..Default::default()
            })
            .into(),
            memory: Some(MemoryStats {
                usage: 4096,
                usage_limit: u64::MAX,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        PodSnapshot {
            pod: "p1".into(),
            shim: Some(ProcessStats {
                resident_bytes: 8 << 20,
                cpu_seconds: 0.5,
                open_fds: 12,
                threads: 3,
            }),
            vmm_process: None,
            vmm: Some(Err("connect: refused".into())),
            guest: Some(Ok(guest)),
            containers: vec![("c1".into(), stats)],
            startup: vec![
                ("shim_spawned", 0.0),
                ("vmm_spawned", 0.25),
                ("agent_ready", 2.75),
            ],
        }
    }

    #[test]
    fn every_source_makes_its_series() {
        let text = snapshot().render();
        for (case, line) in [
            (
                "agent up",
                r#"hyper_metrics_source_up{pod="p1",source="agent"} 1"#,
            ),
            (
                "vmm down",
                r#"hyper_metrics_source_up{pod="p1",source="vmm"} 0"#,
            ),
            (
                "shim memory",
                r#"hyper_process_resident_memory_bytes{pod="p1",process="shim"} 8388608"#,
            ),
            (
                "shim fds",
                r#"hyper_process_open_fds{pod="p1",process="shim"} 12"#,
            ),
            (
                "guest memory",
                r#"hyper_guest_meminfo_bytes{pod="p1",item="MemTotal"} 1073741824"#,
            ),
            ("guest load", r#"hyper_guest_load1{pod="p1"} 0.5"#),
            (
                "guest tasks",
                r#"hyper_guest_tasks{pod="p1",state="total"} 40"#,
            ),
            (
                "guest cpu",
                r#"hyper_guest_cpu_seconds_total{pod="p1",mode="user"} 1.25"#,
            ),
            (
                "guest uptime",
                r#"hyper_guest_uptime_seconds{pod="p1"} 12.5"#,
            ),
            (
                "container cpu",
                r#"hyper_container_cpu_usage_seconds_total{pod="p1",container="c1"} 2.5"#,
            ),
            (
                "container memory",
                r#"hyper_container_memory_usage_bytes{pod="p1",container="c1"} 4096"#,
            ),
            (
                "startup step",
                r#"hyper_startup_step_seconds{pod="p1",step="agent_ready"} 2.75"#,
            ),
            (
                "startup step duration",
                r#"hyper_startup_step_duration_seconds{pod="p1",step="agent_ready"} 2.5"#,
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{case}: no line {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn what_the_guest_or_a_missing_source_cannot_put_there() {
        let text = snapshot().render();
        for (case, absent) in [
            ("a NaN load", "hyper_guest_load5{"),
            ("an infinite load", "hyper_guest_load15{"),
            ("an infinite CPU time", r#"mode="idle""#),
            ("a meminfo name with a quote", "Mem\\\"Free"),
            ("a meminfo name with a newline", "x\\ny"),
            (
                "a meminfo name too long",
                "LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL",
            ),
            (
                "an unlimited memory limit",
                "hyper_container_memory_limit_bytes{",
            ),
            (
                "the VMM's counters when it did not answer",
                "hyper_vmm_exits_total{",
            ),
            ("a process that was not read", r#"process="vmm""#),
        ] {
            assert!(!text.contains(absent), "{case}: {absent:?} in\n{text}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok_and(f64::is_finite), "{line}");
        }
    }
}
