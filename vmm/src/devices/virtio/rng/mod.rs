//! virtio-rng: fills the guest's buffers from the host's getrandom().

mod device;

pub use device::Rng;
