//! [`Metrics`] in the Prometheus text exposition format (version 0.0.4), so a scraper, or
//! a shell script with `awk`, reads the VMM's counters without a JSON parser.

use std::fmt::Write;

use crate::Metrics;

/// One metric family: its `# HELP`/`# TYPE` header and its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            let body: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", body.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value as the format wants it: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

impl Metrics {
    /// Every counter, one sample per line, names prefixed `hyper_vmm_`.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, us) in [
            (
                "hyper_vmm_boot_time_seconds",
                "From the VMM's start to the guest's boot-timer write (0 until then).",
                self.boot_time_us,
            ),
            (
                "hyper_vmm_vcpus_started_seconds",
                "From the VMM's start to its vCPUs entering KVM_RUN (0 until then).",
                self.vcpus_started_us,
            ),
            (
                "hyper_vmm_restored_seconds",
                "From the VMM's start to the VM restored from a snapshot (0: it booted).",
                self.restored_us,
            ),
        ] {
            Family::new(&mut out, name, "gauge", help).sample(name, &[], seconds(us));
        }

        let name = "hyper_vmm_exits_total";
        let e = &self.exits;
        let mut f = Family::new(&mut out, name, "counter", "vCPU exits by reason.");
        for (reason, n) in [
            ("io_in", e.io_in),
            ("io_out", e.io_out),
            ("mmio_read", e.mmio_read),
            ("mmio_write", e.mmio_write),
            ("unhandled_io", e.unhandled_io),
            ("unhandled_mmio", e.unhandled_mmio),
            ("hlt", e.hlt),
            ("intr", e.intr),
            ("shutdown", e.shutdown),
            ("system_event", e.system_event),
            ("fail_entry", e.fail_entry),
            ("internal_error", e.internal_error),
            ("other", e.other),
        ] {
            f.sample(name, &[("reason", reason)], n);
        }

        type DeviceField = fn(&crate::DeviceMetrics) -> u64;
        let device_counters: [(&str, &str, DeviceField); 6] = [
            ("tx_bytes", "Guest-to-host bytes.", |d| d.tx_bytes),
            ("rx_bytes", "Host-to-guest bytes.", |d| d.rx_bytes),
            ("requests", "Requests, packets or descriptor chains.", |d| {
                d.requests
            }),
            ("errors", "Malformed guest input rejected.", |d| d.errors),
            (
                "notifications",
                "Queue notifications from the guest.",
                |d| d.notifications,
            ),
            ("interrupts", "Used-buffer interrupts to the guest.", |d| {
                d.interrupts
            }),
        ];
        for (field, help, get) in device_counters {
            let name = format!("hyper_vmm_device_{field}_total");
            let mut f = Family::new(&mut out, &name, "counter", help);
            for (device, d) in &self.devices {
                f.sample(&name, &[("device", device)], get(d));
            }
        }

        type OpField = fn(&crate::OpMetrics) -> f64;
        let op_counters: [(&str, &str, OpField); 4] = [
            ("requests_total", "Requests of this kind.", |o| {
                o.requests as f64
            }),
            (
                "busy_seconds_total",
                "Time the device spent serving them.",
                |o| seconds(o.busy_us),
            ),
            ("in_bytes_total", "Request bytes from the guest.", |o| {
                o.in_bytes as f64
            }),
            ("out_bytes_total", "Reply bytes to the guest.", |o| {
                o.out_bytes as f64
            }),
        ];
        for (field, help, get) in op_counters {
            let name = format!("hyper_vmm_device_op_{field}");
            let mut f = Family::new(&mut out, &name, "counter", help);
            for (device, d) in &self.devices {
                for (op, o) in &d.ops {
                    f.sample(&name, &[("device", device), ("op", op)], get(o));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceMetrics, OpMetrics};

    #[test]
    fn every_series_is_one_line_with_its_labels() {
        let mut m = Metrics {
            boot_time_us: 1_500_000,
            ..Metrics::default()
        };
        m.exits.mmio_write = 7;
        let mut fs = DeviceMetrics {
            notifications: 3,
            ..DeviceMetrics::default()
        };
        fs.ops.insert(
            "WRITE".into(),
            OpMetrics {
                requests: 2,
                busy_us: 250,
                in_bytes: 8192,
                out_bytes: 48,
            },
        );
        m.devices.insert("fs0".into(), fs);
        m.devices
            .insert("odd\"name".into(), DeviceMetrics::default());
        let text = m.to_prometheus();
        for want in [
            "hyper_vmm_boot_time_seconds 1.5\n",
            "hyper_vmm_exits_total{reason=\"mmio_write\"} 7\n",
            "hyper_vmm_device_notifications_total{device=\"fs0\"} 3\n",
            "hyper_vmm_device_op_requests_total{device=\"fs0\",op=\"WRITE\"} 2\n",
            "hyper_vmm_device_op_busy_seconds_total{device=\"fs0\",op=\"WRITE\"} 0.00025\n",
            "hyper_vmm_device_op_in_bytes_total{device=\"fs0\",op=\"WRITE\"} 8192\n",
            "hyper_vmm_device_requests_total{device=\"odd\\\"name\"} 0\n",
            "# TYPE hyper_vmm_exits_total counter\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // Each family's header comes once.
        assert_eq!(
            text.matches("# TYPE hyper_vmm_device_op_requests_total")
                .count(),
            1
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
