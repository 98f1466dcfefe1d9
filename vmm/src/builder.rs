//! Config → a VM ready to run: memory, kernel and initramfs, boot structures, devices and
//! the kernel command line.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use crate::api::ApiServer;
use crate::arch::x86_64::boot_params::{BootInfo, BootParamsError, write_zero_page};
use crate::arch::x86_64::e820::e820_map;
use crate::arch::x86_64::kernel;
use crate::arch::x86_64::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE, MMIO_GAP_START};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::config::{ConfigError, SerialOutputConfig, Validate, VmConfig};
use crate::device_manager::DeviceManagerError;
use crate::devices::legacy::SerialOutput;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::Vsock;
use crate::inherited_fds::InheritedFds;
use crate::metrics::DeviceCounters;
use crate::persist::{Snapshot, SnapshotError};
use crate::seccomp::{Filters, SeccompError};
use crate::vmm::Vmm;
use crate::vstate::kvm::KvmError;
use crate::vstate::memory::MemoryError;
use crate::vstate::vcpu::VcpuError;
use crate::vstate::vm::VmError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Devices(#[from] DeviceManagerError),
    #[error("cannot set up the event loop: {0}")]
    EventLoop(std::io::Error),
    #[error("cannot open kernel {path}: {source}")]
    KernelOpen {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot load kernel {path} into {memory_mib} MiB of guest memory (an uncompressed ELF vmlinux is required): {why}"
    )]
    KernelLoad {
        path: String,
        memory_mib: u64,
        why: String,
    },
    #[error("cannot read initramfs {path}: {source}")]
    Initrd {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initramfs ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooBig { size: u64 },
    #[error("kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("cannot restore the snapshot: {0}")]
    Snapshot(Box<SnapshotError>),
    #[error(transparent)]
    BootParams(#[from] BootParamsError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error("cannot write boot data into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot open serial output {path}: {source}")]
    Serial {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up {device}: {why}")]
    Device { device: String, why: String },
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("cannot bind the control socket {path}: {source}")]
    Api {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn serial_output(cfg: &SerialOutputConfig) -> Result<Option<Box<dyn Write + Send>>, BuildError> {
    Ok(match cfg {
        SerialOutputConfig::Stdout => Some(Box::new(std::io::stdout())),
        SerialOutputConfig::None => None,
        SerialOutputConfig::File(p) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| BuildError::Serial {
                    path: p.display().to_string(),
                    source,
                })?,
        )),
    })
}

/// The final command line: the user's (or the default) plus the device entries.
pub fn final_cmdline(base: &str, entries: &[String]) -> String {
    let mut s = base.trim().to_string();
    for e in entries {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(e);
    }
    s
}

/// Builds the VM described by `cfg`; `start` is when the process started (for the boot
/// timer); `fds` holds the fds `cfg` names, claimed at start.
pub fn build(cfg: &VmConfig, start: Instant, fds: &mut InheritedFds) -> Result<Vmm, BuildError> {
    cfg.validate()?;
    let path = cfg.kernel.display().to_string();
    let mut kernel = File::open(&cfg.kernel).map_err(|source| BuildError::KernelOpen {
        path: path.clone(),
        source,
    })?;
    let initrd = match &cfg.initrd {
        Some(p) => Some(std::fs::read(p).map_err(|source| BuildError::Initrd {
            path: p.display().to_string(),
            source,
        })?),
        None => None,
    };

    let mem_size = cfg.memory_mib << 20;
    let serial_counters = Arc::new(DeviceCounters::default());
    let serial = SerialOutput::new(serial_output(&cfg.serial)?, serial_counters.clone());
    tracing::debug!("config read: {} µs", start.elapsed().as_micros());
    let mut vmm = Vmm::new(mem_size, cfg.vcpus, serial, start)?;
    tracing::debug!("KVM, memory and vCPUs: {} µs", start.elapsed().as_micros());
    vmm.stop_timeout = Duration::from_millis(cfg.stop_timeout_ms);
    if cfg.seccomp {
        vmm.seccomp = Some(Filters::compile()?);
    }
    vmm.metrics.insert_device("serial", serial_counters);

    // Kernel.
    let loaded = kernel::load(&vmm.mem, &mut kernel).map_err(|why| BuildError::KernelLoad {
        path: path.clone(),
        memory_mib: cfg.memory_mib,
        why,
    })?;
    let entry = loaded.entry;
    tracing::debug!("kernel loaded: {} µs", start.elapsed().as_micros());
    let kernel_end = loaded.end;

    // Initramfs: page-aligned at the top of low memory, above the kernel.
    let initrd_info = match initrd {
        Some(bytes) => {
            let size = bytes.len() as u64;
            let low_end = mem_size.min(MMIO_GAP_START);
            let addr = low_end
                .checked_sub(size)
                .map(|a| a & !0xfff)
                .filter(|&a| a >= kernel_end)
                .ok_or(BuildError::InitrdTooBig { size })?;
            vmm.mem.write_slice(&bytes, GuestAddress(addr))?;
            Some((addr, size))
        }
        None => None,
    };

    tracing::debug!("initramfs loaded: {} µs", start.elapsed().as_micros());
    add_devices(&mut vmm, cfg, fds)?;

    // Command line, zero page, MP table, boot vCPU state.
    let cmdline = final_cmdline(cfg.base_cmdline(), &vmm.devices.cmdline_entries());
    if cmdline.as_bytes().contains(&0) {
        return Err(BuildError::CmdlineNul);
    }
    if cmdline.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(BuildError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    let mut bytes = cmdline.clone().into_bytes();
    bytes.push(0);
    vmm.mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))?;
    tracing::debug!("kernel command line: {cmdline}");
    let map = e820_map(mem_size);
    write_zero_page(
        &vmm.mem,
        &BootInfo {
            cmdline_addr: CMDLINE_ADDR,
            cmdline_size: bytes.len(),
            initrd: initrd_info,
            e820: &map,
            setup_header: loaded.setup_header,
        },
    )?;
    mptable::write(&vmm.mem, cfg.vcpus)?;
    if let Some(bsp) = vmm.vcpus.first() {
        bsp.setup_boot_entry(&vmm.mem, entry)?;
    }

    bind_api(&mut vmm, cfg)?;
    Ok(vmm)
}

/// Restores the VM saved in `snapshot` (its `memory` file beside it) with `cfg`'s devices
/// and control socket instead of booting `cfg`'s kernel. The shape must match: the
/// saved VM's vCPUs and memory are those `cfg` asks for.
pub fn restore(
    cfg: &VmConfig,
    start: Instant,
    snapshot: &Snapshot,
    memory: &File,
    fds: &mut InheritedFds,
) -> Result<Vmm, BuildError> {
    cfg.validate()?;
    let (vcpus, bytes) = (snapshot.vcpus.len(), snapshot.memory_bytes);
    if vcpus != usize::from(cfg.vcpus) || bytes != cfg.memory_mib << 20 {
        return Err(BuildError::Snapshot(Box::new(SnapshotError::Invalid(
            format!(
                "a VM of {vcpus} vCPUs and {} MiB; the config asks for {} and {} MiB",
                bytes >> 20,
                cfg.vcpus,
                cfg.memory_mib
            ),
        ))));
    }
    let serial_counters = Arc::new(DeviceCounters::default());
    let serial = SerialOutput::new(serial_output(&cfg.serial)?, serial_counters.clone());
    let mut vmm = Vmm::restore(snapshot, memory, serial, start, |vmm| {
        add_devices(vmm, cfg, fds)
    })
    .map_err(|e| BuildError::Snapshot(Box::new(e)))?;
    vmm.stop_timeout = Duration::from_millis(cfg.stop_timeout_ms);
    if cfg.seccomp {
        vmm.seccomp = Some(Filters::compile()?);
    }
    vmm.metrics.insert_device("serial", serial_counters);
    bind_api(&mut vmm, cfg)?;
    let restored_us = start.elapsed().as_micros() as u64;
    vmm.metrics
        .restored_us
        .store(restored_us, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!("restored: {restored_us} µs");
    Ok(vmm)
}

/// `cfg`'s virtio devices, in the order that fixes their MMIO slots (a restore relies on
/// it): vsock, block, net, fs, rng.
fn add_devices(vmm: &mut Vmm, cfg: &VmConfig, fds: &mut InheritedFds) -> Result<(), BuildError> {
    let mem = vmm.mem.clone();
    if let Some(v) = &cfg.vsock {
        let dev = Vsock::new(v.cid, &v.uds, vmm.metrics.device("vsock")).map_err(|e| {
            BuildError::Device {
                device: "vsock".into(),
                why: format!("cannot bind {}: {e}", v.uds.display()),
            }
        })?;
        vmm.devices
            .add_virtio(&vmm.vm, &mem, &mut vmm.event_loop, Box::new(dev))?;
    }
    let device_err = |device: &str, e: std::io::Error| BuildError::Device {
        device: device.to_string(),
        why: e.to_string(),
    };
    for (i, b) in cfg.block.iter().enumerate() {
        let name = format!("block{i}");
        let dev =
            Block::new(&name, b, vmm.metrics.device(&name)).map_err(|e| device_err(&name, e))?;
        vmm.devices
            .add_virtio(&vmm.vm, &mem, &mut vmm.event_loop, Box::new(dev))?;
    }
    for (i, n) in cfg.net.iter().enumerate() {
        let name = format!("net{i}");
        let fd = n.fd.map(|fd| fds.take_net(i, fd)).transpose();
        let fd = fd.map_err(|e| BuildError::Device {
            device: name.clone(),
            why: e.to_string(),
        })?;
        let dev =
            Net::new(&name, n, fd, vmm.metrics.device(&name)).map_err(|e| device_err(&name, e))?;
        vmm.devices
            .add_virtio(&vmm.vm, &mem, &mut vmm.event_loop, Box::new(dev))?;
    }
    for (i, f) in cfg.fs.iter().enumerate() {
        let name = format!("fs{i}");
        let (dev, worker) =
            Fs::new(&name, f, vmm.metrics.device(&name)).map_err(|e| BuildError::Device {
                device: name.clone(),
                why: e.to_string(),
            })?;
        vmm.fs_workers.push(worker);
        vmm.devices
            .add_virtio(&vmm.vm, &mem, &mut vmm.event_loop, Box::new(dev))?;
    }
    if cfg.rng {
        let dev = Box::new(Rng::new(vmm.metrics.device("rng")));
        vmm.devices
            .add_virtio(&vmm.vm, &mem, &mut vmm.event_loop, dev)?;
    }

    Ok(())
}

fn bind_api(vmm: &mut Vmm, cfg: &VmConfig) -> Result<(), BuildError> {
    if let Some(path) = &cfg.api_socket {
        let api =
            ApiServer::bind(path, &vmm.event_loop.own_ctl()).map_err(|source| BuildError::Api {
                path: path.display().to_string(),
                source,
            })?;
        vmm.set_api(api);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_gets_device_entries() {
        assert_eq!(
            final_cmdline(
                "console=ttyS0 ",
                &["virtio_mmio.device=4K@0xd0001000:5".into()]
            ),
            "console=ttyS0 virtio_mmio.device=4K@0xd0001000:5"
        );
        assert_eq!(final_cmdline("", &[]), "");
    }
}
