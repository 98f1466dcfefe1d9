//! `hyper-vmm --probe-kvm`: times a loop of guest code in 64-bit mode at CPL0, where a
//! guest kernel runs, to tell a KVM that runs guest kernel code on the CPU from one that
//! emulates it (a nested, paravirtual host where no Linux guest boots).

use std::time::{Duration, Instant};

use hyper_vmm_api::KvmProbe;
use kvm_ioctls::VcpuExit;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::kvm::{KvmError, open_kvm};
use super::memory::{MemoryError, create_guest_memory};
use super::vcpu::{Vcpu, VcpuError, supported_cpuid};
use super::vm::{Vm, VmError};

/// Loop iterations of the measured run: about a millisecond on a CPU, a second emulated.
pub const PROBE_ITERATIONS: u32 = 1_000_000;
const MEMORY: u64 = 16 << 20;
const CODE: u64 = 0x10_0000;
/// The port the probe guest writes when its loop is done.
const DONE_PORT: u16 = 0x80;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("probe guest: {0}")]
    Guest(String),
}

/// `mov ecx, n; l: dec ecx; jnz l; out DONE_PORT, al; jmp $` (64-bit code).
fn loop_code(n: u32) -> Vec<u8> {
    let mut c = vec![0xb9];
    c.extend_from_slice(&n.to_le_bytes());
    c.extend_from_slice(&[0xff, 0xc9, 0x75, 0xfc, 0xe6, DONE_PORT as u8, 0xeb, 0xfe]);
    c
}

/// Boots a tiny VM whose only vCPU runs the loop, once for one iteration and once for
/// [`PROBE_ITERATIONS`], and reports the difference.
pub fn probe_kvm() -> Result<KvmProbe, ProbeError> {
    let kvm = open_kvm()?;
    let mem = create_guest_memory(MEMORY)?;
    let vm = Vm::new(&kvm)?;
    vm.register_memory(&mem)?;
    let cpuid = supported_cpuid(&kvm)?;
    let mut vcpu = Vcpu::new(&vm.fd, 0)?;
    vcpu.configure(&cpuid, 1)?;
    let entry = run_loop(&mut vcpu, &mem, 1)?;
    let full = run_loop(&mut vcpu, &mem, PROBE_ITERATIONS)?;
    Ok(KvmProbe {
        api_version: kvm.get_api_version(),
        iterations: PROBE_ITERATIONS,
        loop_ns: full.saturating_sub(entry).as_nanos() as u64,
    })
}

fn run_loop(vcpu: &mut Vcpu, mem: &GuestMemoryMmap, n: u32) -> Result<Duration, ProbeError> {
    mem.write_slice(&loop_code(n), GuestAddress(CODE))
        .map_err(|e| ProbeError::Guest(format!("write code: {e}")))?;
    vcpu.setup_boot_entry(mem, CODE)?;
    let start = Instant::now();
    loop {
        match vcpu.fd.run() {
            Ok(VcpuExit::IoOut(DONE_PORT, _)) => return Ok(start.elapsed()),
            Ok(VcpuExit::IoOut(..) | VcpuExit::IoIn(..)) => {}
            Ok(other) => return Err(ProbeError::Guest(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(ProbeError::Guest(format!("KVM_RUN: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_is_the_instructions_it_says() {
        assert_eq!(
            loop_code(3),
            [
                0xb9, 3, 0, 0, 0, 0xff, 0xc9, 0x75, 0xfc, 0xe6, 0x80, 0xeb, 0xfe
            ]
        );
    }
}
