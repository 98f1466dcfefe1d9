//! Snapshots: a paused VM saved to two files (its state, and its memory), and a new VM
//! restored from them, for VM templates (boot once, restore per pod).
//!
//! The state file is JSON: the vCPUs' and VM's KVM state and the devices' state. The
//! memory file is guest RAM at its memfd offsets, sparse (untouched pages are holes); a
//! restored VM maps it privately, so every VM restored from one snapshot shares its
//! clean pages and the file itself is never written.
//!
//! A snapshot is only for the VMM build that wrote it, on the host that wrote it: the
//! state layout is no stable interface, and CPUID and MSRs are the host's.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::builder::BuildError;
use crate::devices::bus::lock;
use crate::devices::legacy::SerialOutput;
use crate::devices::legacy::i8042::I8042State;
use crate::devices::legacy::serial::SerialState;
use crate::devices::virtio::mmio::TransportState;
use crate::vmm::Vmm;
use crate::vstate::kvm::open_kvm;
use crate::vstate::memory::{MemoryError, restore_guest_memory, save_guest_memory};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::{VmError, VmState};

/// Bumped whenever the state file's layout changes.
pub const SNAPSHOT_FORMAT: u32 = 1;
/// The largest state file read back: a few vCPUs' state is well below this.
const MAX_STATE_BYTES: u64 = 16 << 20;
/// How long the parked vCPUs may take to save their state.
const SAVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the VM is not running")]
    NotRunning,
    #[error("cannot save the devices: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("snapshot state file: {0}")]
    StateFile(#[source] std::io::Error),
    #[error("snapshot state file is not a snapshot: {0}")]
    Parse(String),
    #[error(
        "snapshot was written by hyper-vmm {vmm_version} (format {format}); this is {} (format {SNAPSHOT_FORMAT})",
        env!("CARGO_PKG_VERSION")
    )]
    Incompatible { vmm_version: String, format: u32 },
    #[error("snapshot holds {0}")]
    Invalid(String),
    #[error("{0}")]
    Device(String),
    #[error(transparent)]
    Build(#[from] Box<BuildError>),
}

/// A snapshot's state file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: u32,
    pub vmm_version: String,
    /// Guest RAM in bytes: the memory file's size.
    pub memory_bytes: u64,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub devices: DeviceStates,
}

/// The devices' state; the virtio transports in the order of their MMIO slots.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceStates {
    pub serial: Option<SerialState>,
    pub i8042: Option<I8042State>,
    pub virtio: Vec<TransportState>,
}

/// Where a snapshot goes, or comes from: files the caller opened (a jailed VMM cannot
/// open paths once its filters are in place).
pub struct SnapshotFiles {
    pub state: File,
    pub memory: File,
}

impl Vmm {
    /// Pauses the VM (if it runs) and saves it into `files`; the VM stays paused. The
    /// memory file is written and synced before the state file, so a state file that
    /// parses names memory that is all there.
    pub fn snapshot(&mut self, files: &SnapshotFiles) -> Result<(), SnapshotError> {
        let set = self.running().ok_or(SnapshotError::NotRunning)?;
        if !self.control.is_paused() && !set.pause(SAVE_TIMEOUT) {
            return Err(SnapshotError::Vcpu(VcpuError::Snapshot(
                "the vCPUs did not pause".into(),
            )));
        }
        let vcpus = set.save_states(self.msr_indices.clone(), SAVE_TIMEOUT)?;
        // With the vCPUs parked, only the event loop (this thread) touches the devices.
        let virtio = self
            .devices
            .virtio
            .iter()
            .map(|(_, t)| lock(t).save_state())
            .collect::<Result<Vec<_>, _>>()
            .map_err(SnapshotError::Unsupported)?;
        let snapshot = Snapshot {
            format: SNAPSHOT_FORMAT,
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            memory_bytes: self.mem.iter().map(|r| r.len()).sum(),
            vm: self.vm.save_state()?,
            vcpus,
            devices: DeviceStates {
                serial: self.devices.serial.as_ref().map(|s| lock(s).save_state()),
                i8042: self.devices.i8042.as_ref().map(|i| lock(i).save_state()),
                virtio,
            },
        };
        save_guest_memory(&self.mem, &files.memory)?;
        let json = serde_json::to_vec(&snapshot).expect("a snapshot always serialises");
        let mut state = &files.state;
        state.set_len(0).map_err(SnapshotError::StateFile)?;
        state.write_all(&json).map_err(SnapshotError::StateFile)?;
        state.sync_data().map_err(SnapshotError::StateFile)?;
        Ok(())
    }

    /// A new VM, paused at the point `snapshot` (read with [`read_state`]) and its
    /// `memory` file saved: call [`Vmm::start`] to run it.
    /// The serial console writes to `serial_out`; boot metrics count from `start`.
    /// `add_devices` adds the virtio devices, the same kinds in the same order as the
    /// saved VM had (their backends may differ: another socket, another directory).
    pub fn restore(
        snapshot: &Snapshot,
        memory: &File,
        serial_out: SerialOutput,
        start: Instant,
        add_devices: impl FnOnce(&mut Vmm) -> Result<(), BuildError>,
    ) -> Result<Vmm, SnapshotError> {
        let kvm = open_kvm().map_err(|e| Box::new(BuildError::from(e)))?;
        let mem = restore_guest_memory(snapshot.memory_bytes, memory)?;
        let mut vmm = Vmm::from_snapshot(kvm, mem, snapshot, serial_out, start)?;
        add_devices(&mut vmm).map_err(Box::new)?;
        let saved = &snapshot.devices.virtio;
        if saved.len() != vmm.devices.virtio.len() {
            return Err(SnapshotError::Invalid(format!(
                "{} virtio devices, this VM has {}",
                saved.len(),
                vmm.devices.virtio.len()
            )));
        }
        for ((_, t), s) in vmm.devices.virtio.iter().zip(saved) {
            lock(t).restore_state(s).map_err(SnapshotError::Device)?;
        }
        Ok(vmm)
    }

    fn from_snapshot(
        kvm: Kvm,
        mem: vm_memory::GuestMemoryMmap,
        snapshot: &Snapshot,
        serial_out: SerialOutput,
        start: Instant,
    ) -> Result<Vmm, SnapshotError> {
        let mut vmm = Vmm::assemble(kvm, mem, serial_out, start).map_err(Box::new)?;
        for (want, state) in snapshot.vcpus.iter().enumerate() {
            if usize::from(state.id) != want {
                return Err(SnapshotError::Invalid(format!(
                    "vCPU {} where vCPU {want} belongs",
                    state.id
                )));
            }
            let vcpu = Vcpu::new(&vmm.vm.fd, state.id)?;
            state.restore(&vcpu.fd)?;
            vmm.vcpus.push(vcpu);
        }
        vmm.vm.restore_state(&snapshot.vm)?;
        let d = &snapshot.devices;
        if let (Some(dev), Some(s)) = (&vmm.devices.serial, &d.serial) {
            lock(dev).restore_state(s).map_err(SnapshotError::Device)?;
        }
        if let (Some(dev), Some(s)) = (&vmm.devices.i8042, &d.i8042) {
            lock(dev).restore_state(s).map_err(SnapshotError::Device)?;
        }
        Ok(vmm)
    }
}

/// Reads and checks a state file: its size, its JSON, its format and VMM version, and
/// that it describes at least one vCPU.
pub fn read_state(file: &File) -> Result<Snapshot, SnapshotError> {
    // From the start whatever the file offset, so one open file serves many restores.
    let mut text = Vec::new();
    let mut from_start = file.try_clone().map_err(SnapshotError::StateFile)?;
    from_start.rewind().map_err(SnapshotError::StateFile)?;
    from_start
        .take(MAX_STATE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(SnapshotError::StateFile)?;
    if text.len() as u64 > MAX_STATE_BYTES {
        return Err(SnapshotError::Invalid(format!(
            "a state file over {MAX_STATE_BYTES} bytes"
        )));
    }
    // The version first: a snapshot of another format need not parse as this one.
    #[derive(Deserialize)]
    struct Header {
        format: u32,
        vmm_version: String,
    }
    let header: Header =
        serde_json::from_slice(&text).map_err(|e| SnapshotError::Parse(e.to_string()))?;
    if header.format != SNAPSHOT_FORMAT || header.vmm_version != env!("CARGO_PKG_VERSION") {
        return Err(SnapshotError::Incompatible {
            vmm_version: header.vmm_version,
            format: header.format,
        });
    }
    let snapshot: Snapshot =
        serde_json::from_slice(&text).map_err(|e| SnapshotError::Parse(e.to_string()))?;
    if snapshot.vcpus.is_empty() || snapshot.vcpus.len() > usize::from(hyper_vmm_api::MAX_VCPUS) {
        return Err(SnapshotError::Invalid(format!(
            "{} vCPUs (1 to {} allowed)",
            snapshot.vcpus.len(),
            hyper_vmm_api::MAX_VCPUS
        )));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn vcpu(id: u8) -> VcpuState {
        VcpuState {
            id,
            cpuid: Vec::new(),
            sregs: Default::default(),
            regs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            msrs: Vec::new(),
            lapic: Default::default(),
            debugregs: Default::default(),
            mp_state: Default::default(),
            vcpu_events: Default::default(),
        }
    }

    fn snapshot() -> Value {
        serde_json::to_value(Snapshot {
            format: SNAPSHOT_FORMAT,
            vmm_version: env!("CARGO_PKG_VERSION").into(),
            memory_bytes: 1 << 20,
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            vcpus: vec![vcpu(0)],
            devices: DeviceStates {
                serial: None,
                i8042: None,
                virtio: Vec::new(),
            },
        })
        .unwrap()
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn state_files_that_are_no_snapshot_of_ours_are_refused_by_name() {
        let with = |key: &str, v: Value| {
            let mut s = snapshot();
            s[key] = v;
            serde_json::to_vec(&s).unwrap()
        };
        let many: Vec<Value> = (0..=hyper_vmm_api::MAX_VCPUS)
            .map(|i| serde_json::to_value(vcpu(i)).unwrap())
            .collect();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("not JSON", b"\x7fELF".to_vec(), "is not a snapshot"),
            ("empty", Vec::new(), "is not a snapshot"),
            ("other format", with("format", json!(2)), "(format 2)"),
            (
                "other VMM",
                with("vmm_version", json!("0.0.1")),
                "hyper-vmm 0.0.1",
            ),
            ("no vCPUs", with("vcpus", json!([])), "0 vCPUs"),
            (
                "too many vCPUs",
                with("vcpus", Value::Array(many)),
                "vCPUs (1 to",
            ),
            (
                "a field missing",
                with("vm", json!({})),
                "is not a snapshot",
            ),
            (
                "too big",
                vec![b' '; MAX_STATE_BYTES as usize + 1],
                "over 16777216 bytes",
            ),
        ];
        for (name, bytes, want) in cases {
            let err = read_state(&file_with(&bytes)).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
        let good = serde_json::to_vec(&snapshot()).unwrap();
        assert_eq!(read_state(&file_with(&good)).unwrap().vcpus.len(), 1);
    }
}
