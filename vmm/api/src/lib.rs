//! The contract between `hyper-vmm` and whoever starts it (the shim): one definition of
//! what the VMM is told and how it answers.
//!
//! - [`VmConfig`] and its parts are the JSON file `hyper-vmm --config FILE.json` reads
//!   (the flags fill in the same struct); unknown keys are an error.
//! - [`Request`] and [`Reply`] are the control socket's protocol (`--api-socket`): one
//!   JSON object per line each way, `{"cmd":"pause"}` → `{"ok":true}` or
//!   `{"ok":false,"error":"…"}`.
//! - [`BASE_CMDLINE`] is the guest kernel command line every VM starts from.
//! - [`Metrics::to_prometheus`] renders the `metrics` reply as Prometheus text, with
//!   [`Exposition`], the text writer the shim's pod metrics use too.
//! - [`KvmProbe`] is what `hyper-vmm --probe-kvm` prints: how this host's KVM runs guest
//!   kernel code.
//!
//! The VMM keeps validation and flag parsing (they need its limits and errors); this
//! crate is serde only.

mod config;
mod control;
mod probe;
mod prometheus;
pub use prometheus::{Exposition, Family};

pub use config::*;
pub use control::*;
pub use probe::*;
