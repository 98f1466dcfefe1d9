//! The Prometheus text exposition format (version 0.0.4): [`Exposition`] writes it, and
//! [`Metrics`] renders itself in it, so a scraper, or a shell script with `awk`, reads the
//! VMM's counters without a JSON parser. The shim writes its pod metrics with the same
//! writer.

use std::fmt::Write;

use crate::Metrics;

/// A page of metric families; every sample carries the page's constant labels first
/// (the shim's `pod="…"`).
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    const_labels: String,
}

impl Exposition {
    /// A page whose samples all carry `const_labels`.
    pub fn new(const_labels: &[(&str, &str)]) -> Self {
        Exposition {
            out: String::new(),
            const_labels: render_labels(const_labels),
        }
    }

    /// Starts family `name` of type `kind` (`gauge`, `counter`); add its samples to
    /// what this returns before starting the next family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> Family<'_> {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family {
            page: self,
            name: name.to_string(),
        }
    }

    /// A family with a single sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help).sample(&[], value);
    }

    /// The text, one line per header and sample.
    pub fn finish(self) -> String {
        self.out
    }
}

/// One metric family being written: its samples.
pub struct Family<'a> {
    page: &'a mut Exposition,
    name: String,
}

impl Family<'_> {
    /// A sample of this family with `labels` besides the page's.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let out = &mut self.page.out;
        out.push_str(&self.name);
        let own = render_labels(labels);
        match (self.page.const_labels.is_empty(), own.is_empty()) {
            (true, true) => {}
            (false, true) => {
                let _ = write!(out, "{{{}}}", self.page.const_labels);
            }
            (true, false) => {
                let _ = write!(out, "{{{own}}}");
            }
            (false, false) => {
                let _ = write!(out, "{{{},{own}}}", self.page.const_labels);
            }
        }
        let _ = writeln!(out, " {value}");
    }
}

/// `k="v",…` with each value escaped as the format wants.
fn render_labels(labels: &[(&str, &str)]) -> String {
    let body: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    body.join(",")
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
        let mut page = Exposition::new(&[]);
        self.write_prometheus(&mut page);
        page.finish()
    }

    /// Adds every counter to `page`.
    pub fn write_prometheus(&self, page: &mut Exposition) {
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
            page.single(name, "gauge", help, seconds(us));
        }

        let e = &self.exits;
        let mut f = page.family("hyper_vmm_exits_total", "counter", "vCPU exits by reason.");
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
            f.sample(&[("reason", reason)], n);
        }

        type DeviceField = fn(&crate::DeviceMetrics) -> u64;
        let mut f = page.family(
            "hyper_vmm_device_connections",
            "gauge",
            "Connections open now (vsock; 0 for the other devices).",
        );
        for (device, d) in &self.devices {
            f.sample(&[("device", device)], d.connections);
        }
        let device_counters: [(&str, &str, DeviceField); 7] = [
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
            ("connections_opened", "Connections opened (vsock).", |d| {
                d.connections_opened
            }),
        ];
        for (field, help, get) in device_counters {
            let name = format!("hyper_vmm_device_{field}_total");
            let mut f = page.family(&name, "counter", help);
            for (device, d) in &self.devices {
                f.sample(&[("device", device)], get(d));
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
            let mut f = page.family(&name, "counter", help);
            for (device, d) in &self.devices {
                for (op, o) in &d.ops {
                    f.sample(&[("device", device), ("op", op)], get(o));
                }
            }
        }
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

    #[test]
    fn a_page_puts_its_constant_labels_first_on_every_sample() {
        let mut page = Exposition::new(&[("pod", "p\"1")]);
        page.single("up", "gauge", "Up.", 1);
        page.family("t_total", "counter", "T.")
            .sample(&[("device", "vsock")], 2);
        let m = Metrics::default();
        m.write_prometheus(&mut page);
        let text = page.finish();
        for want in [
            "up{pod=\"p\\\"1\"} 1\n",
            "t_total{pod=\"p\\\"1\",device=\"vsock\"} 2\n",
            "hyper_vmm_boot_time_seconds{pod=\"p\\\"1\"} 0\n",
            "hyper_vmm_exits_total{pod=\"p\\\"1\",reason=\"hlt\"} 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
