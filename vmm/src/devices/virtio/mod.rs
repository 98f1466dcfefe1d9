//! virtio devices over one MMIO transport. Each device implements [`VirtioDevice`]; the
//! transport ([`mmio::MmioTransport`]) owns the register file, the queues' configuration
//! and the notification eventfds, and hands live queues to the device on activation.

pub mod activation;
pub mod block;
pub mod device;
pub mod fs;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

#[cfg(test)]
mod random_tests;
#[cfg(test)]
pub mod test_utils;

pub use activation::Activation;
pub use device::{ActivateError, DeviceError, Interrupt, VirtioDevice};

// Device types (virtio 1.1, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Feature bit every device offers: we speak only modern (1.0+) virtio.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The used and avail rings carry event indexes, so each side tells the other when it
/// wants to be notified (virtio 1.2, 2.7.10).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Guest-facing interrupt causes (InterruptStatus bits).
pub const INT_VRING: u32 = 0x1;
pub const INT_CONFIG: u32 = 0x2;
