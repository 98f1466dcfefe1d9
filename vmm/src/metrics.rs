//! Counters the control socket reports: vCPU exits by reason and bytes per device.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_vmm_api::{DeviceMetrics, ExitMetrics, Metrics as MetricsReport, OpMetrics};

/// vCPU exits by reason, summed over all vCPUs.
#[derive(Default)]
pub struct ExitCounters {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    pub unhandled_io: AtomicU64,
    pub unhandled_mmio: AtomicU64,
    pub hlt: AtomicU64,
    pub intr: AtomicU64,
    pub shutdown: AtomicU64,
    pub system_event: AtomicU64,
    pub fail_entry: AtomicU64,
    pub internal_error: AtomicU64,
    pub other: AtomicU64,
}

/// Byte and request counts for one device.
#[derive(Default)]
pub struct DeviceCounters {
    /// Guest → host bytes.
    pub tx_bytes: AtomicU64,
    /// Host → guest bytes.
    pub rx_bytes: AtomicU64,
    /// Requests, packets or descriptor chains handled.
    pub requests: AtomicU64,
    /// Malformed input from the guest that was rejected.
    pub errors: AtomicU64,
    /// Queue notifications from the guest (for devices that count them).
    pub notifications: AtomicU64,
    /// Used-buffer interrupts raised (for devices that count them).
    pub interrupts: AtomicU64,
    /// Connections open now (vsock).
    pub connections: AtomicU64,
    /// Connections opened since boot (vsock).
    pub connections_opened: AtomicU64,
    /// By kind of request, for devices that tell kinds apart (virtio-fs: FUSE opcodes).
    /// The kinds are the device's own names, never the guest's, so the map stays small.
    ops: Mutex<BTreeMap<&'static str, OpTotals>>,
}

/// One kind's sums; time in ns so that sub-µs requests still add up.
#[derive(Default)]
struct OpTotals {
    requests: u64,
    busy_ns: u64,
    in_bytes: u64,
    out_bytes: u64,
}

impl DeviceCounters {
    /// Counts one request of kind `op` that took `busy` to serve.
    pub fn record_op(&self, op: &'static str, in_bytes: u64, out_bytes: u64, busy: Duration) {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let o = ops.entry(op).or_default();
        o.requests += 1;
        o.busy_ns += busy.as_nanos() as u64;
        o.in_bytes += in_bytes;
        o.out_bytes += out_bytes;
    }

    /// The per-kind sums so far.
    pub fn ops(&self) -> BTreeMap<String, OpMetrics> {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.iter()
            .map(|(k, o)| {
                let m = OpMetrics {
                    requests: o.requests,
                    busy_us: o.busy_ns / 1000,
                    in_bytes: o.in_bytes,
                    out_bytes: o.out_bytes,
                };
                (k.to_string(), m)
            })
            .collect()
    }
}

#[derive(Default)]
pub struct Metrics {
    pub exits: ExitCounters,
    /// µs from process start to the guest's boot-timer signal (0 until then).
    pub boot_time_us: Arc<AtomicU64>,
    /// µs from process start to the vCPU threads being started (0 until then).
    pub vcpus_started_us: AtomicU64,
    /// µs from process start to the VM restored from a snapshot (0: it booted).
    pub restored_us: AtomicU64,
    devices: Mutex<BTreeMap<String, Arc<DeviceCounters>>>,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// Counters for the device called `name`, created on first use.
    pub fn device(&self, name: &str) -> Arc<DeviceCounters> {
        let mut map = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// Registers counters that were created before the metrics (e.g. the serial port's).
    pub fn insert_device(&self, name: &str, counters: Arc<DeviceCounters>) {
        let mut map = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(name.to_string(), counters);
    }

    /// The counters now, as the `metrics` reply carries them.
    pub fn snapshot(&self) -> MetricsReport {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let e = &self.exits;
        let devices = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, d)| {
                let counts = DeviceMetrics {
                    tx_bytes: r(&d.tx_bytes),
                    rx_bytes: r(&d.rx_bytes),
                    requests: r(&d.requests),
                    errors: r(&d.errors),
                    notifications: r(&d.notifications),
                    interrupts: r(&d.interrupts),
                    connections: r(&d.connections),
                    connections_opened: r(&d.connections_opened),
                    ops: d.ops(),
                };
                (name.clone(), counts)
            })
            .collect();
        MetricsReport {
            boot_time_us: r(&self.boot_time_us),
            vcpus_started_us: r(&self.vcpus_started_us),
            restored_us: r(&self.restored_us),
            exits: ExitMetrics {
                io_in: r(&e.io_in),
                io_out: r(&e.io_out),
                mmio_read: r(&e.mmio_read),
                mmio_write: r(&e.mmio_write),
                unhandled_io: r(&e.unhandled_io),
                unhandled_mmio: r(&e.unhandled_mmio),
                hlt: r(&e.hlt),
                intr: r(&e.intr),
                shutdown: r(&e.shutdown),
                system_event: r(&e.system_event),
                fail_entry: r(&e.fail_entry),
                internal_error: r(&e.internal_error),
                other: r(&e.other),
            },
            devices,
        }
    }
}
