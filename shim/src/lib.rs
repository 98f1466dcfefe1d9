//! The host side of hyper: the containerd shim (`containerd-shim-hyper-v1`) and the
//! `hyperctl` debugging CLI.
//!
//! service (containerd's task API) → sandbox (one VM per pod: hypervisor + agent +
//! containers) → `hypervisor::Hypervisor` and the agent client.
pub mod agent;
pub mod command;
pub mod config;
pub mod hypervisor;
pub mod io;
pub mod process;
pub mod rootfs;
pub mod sandbox;
pub mod service;
pub mod share;
pub mod sizing;
