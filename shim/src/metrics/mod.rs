//! The pods' metrics in Prometheus text (Kata's shim metrics and kata-monitor, in one
//! binary less). Each pod's shim serves its page on `metrics.sock` in the pod's state dir
//! (HTTP, `GET /metrics`), gathered afresh at each scrape: the shim and VMM processes,
//! the VMM's counters from its control socket, the guest and its containers from the
//! agent, the start-up trace. `hyperctl metrics` prints one pod's page or all pods';
//! `hyperctl monitor` serves all pods of the host on one TCP endpoint.
pub mod http;
pub mod merge;
pub mod monitor;
pub mod pod;
pub mod process;

use std::time::Duration;

pub use pod::PodSnapshot;

/// In a pod's state dir: the socket its shim serves the pod's metrics on.
pub const SOCKET: &str = "metrics.sock";
/// How long a scrape waits for each source (the VMM, the agent, a pod's shim).
pub const SOURCE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long hyperctl waits for a pod's shim to serve its page (which waits for its own
/// sources).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(4);
