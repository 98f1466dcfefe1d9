//! virtio-vsock in userspace with Firecracker's hybrid host side: guest streams map to
//! unix-socket connections (see [`unix::muxer`]).
//!
//! `packet` parses and writes guest buffers, `csm` is the per-connection state machine,
//! `unix` is the host side, `device` is the virtio device that moves packets between the
//! queues and the muxer.

pub mod csm;
mod device;
pub mod packet;
pub mod unix;

pub use device::Vsock;
