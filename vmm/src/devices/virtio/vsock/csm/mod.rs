//! The connection state machine: one host stream ↔ one guest vsock stream.

pub mod connection;

pub use connection::{ConnState, Connection, TX_BUF_SIZE};
