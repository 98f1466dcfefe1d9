//! The guest's container stats in containerd's `io.containerd.cgroups.v2.Metrics`.
use containerd_shim::protos::cgroups_v2::metrics as cg2;
use containerd_shim::protos::protobuf::MessageField;
use hyper_agent_protocol::agent;

/// The agent's cgroup v2 numbers in containerd's `io.containerd.cgroups.v2.Metrics`.
pub fn to_cgroup_v2_metrics(s: &agent::StatsContainerResponse) -> cg2::Metrics {
    let mut m = cg2::Metrics::new();
    if let Some(cpu) = s.cpu.as_ref() {
        m.cpu = MessageField::some(cg2::CPUStat {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(mem) = s.memory.as_ref() {
        let stat = |k: &str| mem.stat.get(k).copied().unwrap_or(0);
        m.memory = MessageField::some(cg2::MemoryStat {
            usage: mem.usage,
            usage_limit: mem.usage_limit,
            max_usage: mem.max_usage,
            swap_usage: mem.swap_usage,
            swap_limit: mem.swap_limit,
            anon: stat("anon"),
            file: stat("file"),
            kernel_stack: stat("kernel_stack"),
            slab: stat("slab"),
            sock: stat("sock"),
            shmem: stat("shmem"),
            file_mapped: stat("file_mapped"),
            file_dirty: stat("file_dirty"),
            file_writeback: stat("file_writeback"),
            pgfault: stat("pgfault"),
            pgmajfault: stat("pgmajfault"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            ..Default::default()
        });
        m.memory_events = MessageField::some(cg2::MemoryEvents {
            oom: mem.oom_events,
            oom_kill: mem.oom_kill,
            ..Default::default()
        });
    }
    if let Some(p) = s.pids.as_ref() {
        m.pids = MessageField::some(cg2::PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    if !s.io.is_empty() {
        m.io = MessageField::some(cg2::IOStat {
            usage: s
                .io
                .iter()
                .map(|e| cg2::IOEntry {
                    major: e.major,
                    minor: e.minor,
                    rbytes: e.rbytes,
                    wbytes: e.wbytes,
                    rios: e.rios,
                    wios: e.wios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
    }
    m.hugetlb = s
        .hugetlb
        .iter()
        .map(|h| cg2::HugeTlbStat {
            pagesize: h.pagesize.clone(),
            current: h.current,
            max: h.max,
            ..Default::default()
        })
        .collect();
    m.network = s
        .network
        .iter()
        .map(|n| cg2::NetworkStat {
            name: n.name.clone(),
            rx_bytes: n.rx_bytes,
            rx_packets: n.rx_packets,
            rx_errors: n.rx_errors,
            rx_dropped: n.rx_dropped,
            tx_bytes: n.tx_bytes,
            tx_packets: n.tx_packets,
            tx_errors: n.tx_errors,
            tx_dropped: n.tx_dropped,
            ..Default::default()
        })
        .collect();
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;

    #[test]
    fn stats_map_onto_containerd_metrics() {
        let mut mem = agent::MemoryStats {
            usage: 10,
            usage_limit: 20,
            oom_kill: 1,
            ..Default::default()
        };
        mem.stat.insert("anon".into(), 7);
        let s = agent::StatsContainerResponse {
            cpu: MessageField::some(agent::CpuStats {
                usage_usec: 5,
                ..Default::default()
            }),
            memory: MessageField::some(mem),
            pids: MessageField::some(agent::PidsStats {
                current: 2,
                limit: 9,
                ..Default::default()
            }),
            io: vec![agent::IoEntry {
                major: 254,
                rbytes: 4096,
                ..Default::default()
            }],
            ..Default::default()
        };
        let m = to_cgroup_v2_metrics(&s);
        assert_eq!(m.cpu.usage_usec, 5);
        assert_eq!(
            (m.memory.usage, m.memory.usage_limit, m.memory.anon),
            (10, 20, 7)
        );
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!((m.pids.current, m.pids.limit), (2, 9));
        assert_eq!((m.io.usage[0].major, m.io.usage[0].rbytes), (254, 4096));
        // And it survives the wire as containerd decodes it.
        let back = cg2::Metrics::parse_from_bytes(&m.write_to_bytes().unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
