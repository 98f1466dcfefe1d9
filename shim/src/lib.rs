//! The host side of hyper: the containerd shim (`containerd-shim-hyper-v1`) and the
//! `hyperctl` debugging CLI.
//!
//! service (containerd's task API) → pod (containers and processes, the rules) →
//! sandbox (one VM) → `hypervisor::Hypervisor` and `agent::Agent`.
pub mod agent;
pub mod command;
pub mod config;
pub mod factory;
pub mod host_cgroup;
pub mod host_check;
pub mod hypervisor;
pub mod identifier;
pub mod metrics;
pub mod network;
pub mod pid_file;
pub mod pod;
pub mod rootfs;
pub mod sandbox;
pub mod service;
pub mod share;
pub mod sizing;
pub mod startup_trace;
pub mod state_dir;
