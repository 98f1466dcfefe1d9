//! CPUID for each vCPU: what KVM supports, with the topology fields made true for this VM.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Adjusts `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `cpu_id` of `num_cpus`.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_id: u8, num_cpus: u8) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX: 31-24 initial APIC id, 23-16 logical processors, 15-8 CLFLUSH size (8 × 8).
                entry.ebx = (u32::from(cpu_id) << 24) | (u32::from(num_cpus) << 16) | (8 << 8);
                entry.ecx |= ECX_HYPERVISOR;
                if num_cpus > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                // One thread per core, all cores in one package; EDX is the x2APIC id.
                entry.edx = u32::from(cpu_id);
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8; // level type SMT
                    }
                    1 => {
                        entry.eax = bits_for(num_cpus);
                        entry.ebx = u32::from(num_cpus);
                        entry.ecx = (2 << 8) | 1; // level type core
                    }
                    n => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = n & 0xff; // level type invalid
                    }
                }
            }
            _ => {}
        }
    }
}

/// Number of APIC-id bits needed to number `n` CPUs.
fn bits_for(n: u8) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (u32::from(n) - 1).leading_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_id_and_count_land_in_leaf_1() {
        let mut cpuid = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ])
        .unwrap();
        filter_cpuid(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[1].eax, 2);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(5), 3);
    }
}
