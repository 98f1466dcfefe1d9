//! virtio-net over a host tap device (opened by name, or an inherited fd). No offloads: the
//! tap carries plain Ethernet frames and we add/strip the 12-byte virtio-net header.

mod device;
pub mod tap;

pub use device::Net;
