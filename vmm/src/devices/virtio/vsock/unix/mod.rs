//! The host side of vsock: unix sockets, Firecracker's hybrid protocol.

pub mod muxer;

pub use muxer::Muxer;
