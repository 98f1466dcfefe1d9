//! The host side of hyper: the containerd shim's building blocks and the `hyperctl` CLI.
pub mod agent;
