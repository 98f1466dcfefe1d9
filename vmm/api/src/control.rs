//! The control socket's protocol: one JSON request per line, one JSON reply line each.
//!
//! ```text
//! → {"cmd":"ping"}          ← {"ok":true,"state":"running"}
//! → {"cmd":"pause"}         ← {"ok":true}
//! → {"cmd":"metrics"}       ← {"ok":true,"metrics":{"boot_time_us":N,"vcpus_started_us":N,"exits":{…},"devices":{…}}}
//! → {"cmd":"reboot"}        ← {"ok":false,"error":"…"}
//! ```
//!
//! The VMM also takes a bare word (`ping`) and `{"action":"ping"}` for hand-typed use.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A control request. On the wire: `{"cmd":"<name>"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Is the VM there: answered with its [`VmState`].
    Ping,
    /// Park every vCPU; answered once they are parked.
    Pause,
    Resume,
    /// Graceful stop (Ctrl-Alt-Del, then a hard stop after `stop_timeout_ms`); answered
    /// before the VM stops.
    Stop,
    /// Stop at once, without asking the guest: for a guest with nothing left to save
    /// (its containers gone, its filesystems unmounted); answered before the VM stops.
    PowerOff,
    /// Answered with [`Metrics`].
    Metrics,
    /// Pause the VM and save it to the config's `snapshot.save_to`; answered once the
    /// files are written. The VM stays paused (`resume` runs it on).
    Snapshot,
}

impl Request {
    pub const ALL: [Request; 7] = [
        Request::Ping,
        Request::Pause,
        Request::Resume,
        Request::Stop,
        Request::PowerOff,
        Request::Metrics,
        Request::Snapshot,
    ];

    /// The request's name, the value of `cmd`.
    pub fn name(self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Stop => "stop",
            Request::PowerOff => "poweroff",
            Request::Metrics => "metrics",
            Request::Snapshot => "snapshot",
        }
    }

    /// The request as it is sent: one JSON object and a newline.
    pub fn to_line(self) -> String {
        let mut line = serde_json::to_string(&self).expect("a Request always serialises");
        line.push('\n');
        line
    }

    /// Parses one request line: `{"cmd":"ping"}`, `{"action":"ping"}` or the bare word
    /// `ping`. The error says what is wrong, for the `{"ok":false,"error":…}` reply.
    pub fn from_line(line: &str) -> Result<Request, String> {
        let line = line.trim();
        if !line.starts_with('{') {
            return line.parse();
        }
        let mut v: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
        if let Value::Object(o) = &mut v
            && !o.contains_key("cmd")
            && let Some(action) = o.remove("action")
        {
            o.insert("cmd".into(), action);
        }
        serde_json::from_value(v).map_err(|e| format!("bad request: {e}"))
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Request {
    type Err = String;
    /// A request by its name (`ping`, `pause`, `resume`, `stop`, `poweroff`, `metrics`,
    /// `snapshot`).
    fn from_str(s: &str) -> Result<Request, String> {
        Request::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown command {s:?} (expected ping, pause, resume, stop, poweroff, metrics or snapshot)"
                )
            })
    }
}

/// Whether the vCPUs run, as `ping` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    Paused,
}

/// vCPU exits by reason, summed over all vCPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExitMetrics {
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub unhandled_io: u64,
    pub unhandled_mmio: u64,
    pub hlt: u64,
    pub intr: u64,
    pub shutdown: u64,
    pub system_event: u64,
    pub fail_entry: u64,
    pub internal_error: u64,
    pub other: u64,
}

/// Byte and request counts for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceMetrics {
    /// Guest → host bytes.
    pub tx_bytes: u64,
    /// Host → guest bytes.
    pub rx_bytes: u64,
    /// Requests, packets or descriptor chains handled.
    pub requests: u64,
    /// Malformed input from the guest that was rejected.
    pub errors: u64,
    /// Queue notifications (kicks) from the guest driver.
    pub notifications: u64,
    /// Used-buffer interrupts raised to the guest.
    pub interrupts: u64,
    /// Connections open now (vsock; 0 for devices without connections).
    pub connections: u64,
    /// Connections opened since boot (vsock).
    pub connections_opened: u64,
    /// By kind of request (for virtio-fs, the FUSE opcode: "LOOKUP", "WRITE", …); only
    /// devices that tell request kinds apart fill it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ops: BTreeMap<String, OpMetrics>,
}

/// Requests of one kind on one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpMetrics {
    pub requests: u64,
    /// Time spent serving them, in µs (the device's own thread, queue wait excluded).
    pub busy_us: u64,
    /// Request bytes the guest sent (headers included).
    pub in_bytes: u64,
    /// Reply bytes written back to the guest.
    pub out_bytes: u64,
}

/// What `metrics` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metrics {
    /// µs from the VMM's start to the guest's boot-timer write (0 until then).
    pub boot_time_us: u64,
    /// µs from the VMM's start to its vCPU threads entering KVM_RUN (0 until then).
    pub vcpus_started_us: u64,
    /// µs from the VMM's start to the VM restored from its snapshot, paused with its
    /// devices (0 for a VM that booted).
    pub restored_us: u64,
    pub exits: ExitMetrics,
    /// By device name: "serial", "vsock", "block0", …
    pub devices: BTreeMap<String, DeviceMetrics>,
}

/// What a successful reply carries besides `"ok":true`: `state` for `ping`, `metrics`
/// for `metrics`, nothing for the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Success {
    pub state: Option<VmState>,
    pub metrics: Option<Metrics>,
}

/// A reply: `{"ok":true,…}` ([`Success`]'s fields beside `ok`) or
/// `{"ok":false,"error":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireReply", try_from = "WireReply")]
pub enum Reply {
    Ok(Success),
    Error(String),
}

impl Reply {
    /// `{"ok":true}`.
    pub fn done() -> Reply {
        Reply::Ok(Success::default())
    }

    /// `{"ok":true,"state":…}`, the answer to `ping`.
    pub fn with_state(state: VmState) -> Reply {
        Reply::Ok(Success {
            state: Some(state),
            metrics: None,
        })
    }

    /// `{"ok":true,"metrics":…}`, the answer to `metrics`.
    pub fn with_metrics(metrics: Metrics) -> Reply {
        Reply::Ok(Success {
            state: None,
            metrics: Some(metrics),
        })
    }

    /// `{"ok":false,"error":…}`.
    pub fn error(message: impl Into<String>) -> Reply {
        Reply::Error(message.into())
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Ok(_))
    }

    /// The state a `ping` reply carries.
    pub fn state(&self) -> Option<VmState> {
        match self {
            Reply::Ok(s) => s.state,
            Reply::Error(_) => None,
        }
    }

    /// `Ok` with what the reply carries, or `Err` with the VMM's message.
    pub fn into_result(self) -> Result<Success, String> {
        match self {
            Reply::Ok(s) => Ok(s),
            Reply::Error(e) => Err(e),
        }
    }

    /// The reply as it is sent: one JSON object and a newline.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a Reply always serialises");
        line.push('\n');
        line
    }

    /// Parses one reply line. Fields this version does not know are ignored, so a newer
    /// VMM can add to a reply.
    pub fn from_line(line: &str) -> Result<Reply, serde_json::Error> {
        serde_json::from_str(line.trim())
    }
}

/// The flat object on the wire.
#[derive(Serialize, Deserialize)]
struct WireReply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<VmState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<Metrics>,
}

impl From<Reply> for WireReply {
    fn from(r: Reply) -> WireReply {
        match r {
            Reply::Ok(Success { state, metrics }) => WireReply {
                ok: true,
                error: None,
                state,
                metrics,
            },
            Reply::Error(e) => WireReply {
                ok: false,
                error: Some(e),
                state: None,
                metrics: None,
            },
        }
    }
}

impl TryFrom<WireReply> for Reply {
    type Error = String;
    fn try_from(w: WireReply) -> Result<Reply, String> {
        match (w.ok, w.error) {
            (true, None) => Ok(Reply::Ok(Success {
                state: w.state,
                metrics: w.metrics,
            })),
            (true, Some(e)) => Err(format!("\"ok\" is true but there is an error: {e:?}")),
            (false, Some(e)) => Ok(Reply::Error(e)),
            (false, None) => Err("\"ok\" is false but there is no \"error\"".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_the_wire() {
        for (req, line) in [
            (Request::Ping, "{\"cmd\":\"ping\"}\n"),
            (Request::Pause, "{\"cmd\":\"pause\"}\n"),
            (Request::Resume, "{\"cmd\":\"resume\"}\n"),
            (Request::Stop, "{\"cmd\":\"stop\"}\n"),
            (Request::PowerOff, "{\"cmd\":\"poweroff\"}\n"),
            (Request::Metrics, "{\"cmd\":\"metrics\"}\n"),
            (Request::Snapshot, "{\"cmd\":\"snapshot\"}\n"),
        ] {
            assert_eq!(req.to_line(), line, "{req}");
            assert_eq!(Request::from_line(line), Ok(req), "{line}");
            assert_eq!(Request::from_line(req.name()), Ok(req), "{req}");
            assert_eq!(req.name().parse::<Request>(), Ok(req));
        }
    }

    #[test]
    fn request_lines_the_vmm_takes_or_refuses() {
        let cases: &[(&str, Result<Request, &str>)] = &[
            ("ping\n", Ok(Request::Ping)),
            (" metrics ", Ok(Request::Metrics)),
            (r#"{"cmd":"pause"}"#, Ok(Request::Pause)),
            (r#" {"cmd": "resume"} "#, Ok(Request::Resume)),
            (r#"{"action":"stop"}"#, Ok(Request::Stop)),
            (r#"{"action":"poweroff"}"#, Ok(Request::PowerOff)),
            (r#"{"cmd":"ping","id":7}"#, Ok(Request::Ping)),
            ("reboot", Err("unknown command \"reboot\"")),
            ("", Err("unknown command")),
            (r#"{"cmd":"reboot"}"#, Err("unknown variant `reboot`")),
            (r#"{"cmd":1}"#, Err("bad request")),
            (r#"{"x":1}"#, Err("missing field `cmd`")),
            ("[1]", Err("unknown command")),
            ("{", Err("bad JSON")),
        ];
        for (line, want) in cases {
            match (Request::from_line(line), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{line:?}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{line:?}: {got}"),
                (got, want) => panic!("{line:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn replies_on_the_wire() {
        let mut metrics = Metrics {
            boot_time_us: 42,
            ..Metrics::default()
        };
        metrics.exits.io_out = 3;
        metrics.devices.insert(
            "vsock".into(),
            DeviceMetrics {
                tx_bytes: 1,
                ..DeviceMetrics::default()
            },
        );
        for (reply, line) in [
            (Reply::done(), r#"{"ok":true}"#),
            (
                Reply::with_state(VmState::Running),
                r#"{"ok":true,"state":"running"}"#,
            ),
            (
                Reply::with_state(VmState::Paused),
                r#"{"ok":true,"state":"paused"}"#,
            ),
            (Reply::error("no"), r#"{"ok":false,"error":"no"}"#),
        ] {
            assert_eq!(reply.to_line(), format!("{line}\n"));
            assert_eq!(Reply::from_line(line).unwrap(), reply, "{line}");
        }
        let m = Reply::with_metrics(metrics.clone());
        let v: Value = serde_json::from_str(&m.to_line()).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["metrics"]["boot_time_us"], 42);
        assert_eq!(v["metrics"]["exits"]["io_out"], 3);
        assert_eq!(v["metrics"]["exits"]["hlt"], 0);
        assert_eq!(v["metrics"]["devices"]["vsock"]["tx_bytes"], 1);
        assert_eq!(Reply::from_line(&m.to_line()).unwrap(), m);
        assert_eq!(m.into_result().unwrap().metrics, Some(metrics));
        assert_eq!(Reply::error("x").into_result(), Err("x".to_string()));
    }

    #[test]
    fn reply_lines_the_shim_takes_or_refuses() {
        let cases: &[(&str, Option<Reply>)] = &[
            (
                r#"{"ok": true, "state": "paused"}"#,
                Some(Reply::with_state(VmState::Paused)),
            ),
            (r#"{"ok":true,"new_field":1}"#, Some(Reply::done())),
            (
                r#"{"ok":false,"error":"vCPUs did not pause in time"}"#,
                Some(Reply::error("vCPUs did not pause in time")),
            ),
            (
                r#"{"ok":true,"metrics":{"boot_time_us":5}}"#,
                Some(Reply::with_metrics(Metrics {
                    boot_time_us: 5,
                    ..Metrics::default()
                })),
            ),
            (r#"{"ok":false}"#, None),
            (r#"{"ok":true,"error":"x"}"#, None),
            (r#"{"state":"running"}"#, None),
            (r#"{"ok":"yes"}"#, None),
            (r#"{"ok":true,"state":"sleeping"}"#, None),
            ("ok", None),
            ("", None),
        ];
        for (line, want) in cases {
            match (Reply::from_line(line), want) {
                (Ok(got), Some(w)) => assert_eq!(&got, w, "{line:?}"),
                (Err(_), None) => {}
                (got, want) => panic!("{line:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
