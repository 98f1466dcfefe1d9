//! `hyper-vmm --probe-kvm`: what this host's KVM does with guest kernel code, as one JSON
//! line. `hyperctl check` reads it to tell whether a Linux guest can boot here.
use serde::{Deserialize, Serialize};

/// Above this many nanoseconds per loop iteration at CPL0, guest kernel code is not run by
/// the CPU but emulated instruction by instruction (a nested, paravirtual KVM). A CPU runs
/// an iteration in about a nanosecond, a nested KVM under QEMU's TCG in 2-15 ns; the
/// emulating KVM of our build machines takes about 1,300 ns, and no Linux kernel boots
/// under it (its int3 self-test kills it).
pub const EMULATED_NS_PER_ITERATION: f64 = 100.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvmProbe {
    /// KVM_GET_API_VERSION (12 on every Linux since 2.6.22).
    pub api_version: i32,
    /// Iterations of the `dec ecx; jnz` loop the probe guest ran in 64-bit mode at CPL0.
    pub iterations: u32,
    /// Wall time of the loop, less that of a one-iteration run (the entry and exit).
    pub loop_ns: u64,
}

impl KvmProbe {
    pub fn ns_per_iteration(&self) -> f64 {
        self.loop_ns as f64 / f64::from(self.iterations.max(1))
    }

    /// Whether guest kernel-mode code is emulated rather than run by the CPU.
    pub fn emulates_kernel_mode(&self) -> bool {
        self.ns_per_iteration() > EMULATED_NS_PER_ITERATION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_separates_hardware_from_emulation() {
        let cases = [
            ("bare metal", 1_000_000, 600_000, false),
            ("nested KVM under TCG", 1_000_000, 13_000_000, false),
            ("emulating KVM", 1_000_000, 1_300_000_000, true),
            ("no iterations", 0, 0, false),
        ];
        for (name, iterations, loop_ns, emulated) in cases {
            let p = KvmProbe {
                api_version: 12,
                iterations,
                loop_ns,
            };
            assert_eq!(p.emulates_kernel_mode(), emulated, "{name}");
        }
    }
}
