//! hyper-vmm: a KVM virtual machine monitor for one microVM per process.
//!
//! `builder` turns a [`config::VmConfig`] into a running VM: guest memory ([`vstate::memory`]),
//! the KVM VM and vCPUs ([`vstate`]), boot structures ([`arch`]), legacy and virtio devices
//! ([`devices`], wired up by [`device_manager`]); [`vmm`] runs the event loop that serves
//! device I/O and the control socket ([`api`]) until the guest resets or is stopped.

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod device_manager;
pub mod devices;
pub mod event_loop;
pub mod inherited_fds;
pub mod jail;
pub mod metrics;
pub mod persist;
pub mod private_socket;
pub mod privileges;
pub mod rate_limit;
pub mod seccomp;
pub mod vmm;
pub mod vstate;
