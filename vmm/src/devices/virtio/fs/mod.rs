//! virtio-fs (virtio 1.2, 5.11): a host directory served to the guest as FUSE requests on
//! virtqueues, answered inside this process by fuse-backend-rs's passthrough file system
//! ("inline virtio-fs", as Kata's Dragonball does it), so no virtiofsd runs beside the VMM.
//!
//! fuse-backend-rs is on the rust-vmm 0.17 line while the rest of the VMM is on 0.18. The
//! device sees the very same guest mappings through 0.17 types (`memory_view`) and runs its
//! own 0.17 queues, set up from what the transport recorded; README.md says why.

mod device;
mod memory_view;
mod passthrough;
mod share;
mod worker;

#[cfg(test)]
mod tests;

pub use device::{Fs, RESET_WAIT};
pub use share::{ShareError, open_share};
pub use worker::FsWorker;

/// Queue 0 takes FORGET-style requests that need no reply; queue 1 the rest.
pub const HIPRIO_QUEUE: usize = 0;
pub const REQUEST_QUEUE: usize = 1;
