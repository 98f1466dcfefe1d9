//! virtio-block backed by a host file: read, write, flush and GET_ID, read-only on request.
//! `request` parses guest chains (all bounds checks), `device` serves them.

mod device;
pub mod request;

pub use device::Block;
