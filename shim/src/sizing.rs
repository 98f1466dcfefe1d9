//! How big a pod's VM is. The config's vCPUs and memory are what the guest itself needs;
//! on top come the pod's limits, as Kata adds them: CRI's sandbox annotations when
//! containerd sets them (the whole pod's limits), else the first container's own
//! `linux.resources`. `io.hyper.vcpus` / `io.hyper.memory_mib` annotations (let through by
//! CRI's `pod_annotations = ["io.hyper.*"]`) set the size outright.
//!
//! The VM cannot grow later (no hotplug yet): containers that join bring no extra room.
use std::collections::HashMap;

use crate::config::HypervisorConfig;

pub const ANNOTATION_VCPUS: &str = "io.hyper.vcpus";
pub const ANNOTATION_MEMORY_MIB: &str = "io.hyper.memory_mib";
const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// hyper-vmm's limits (from the contract, `hyper-vmm-api`); the minimum is the guest's.
pub const MAX_VCPUS: u32 = hyper_vmm_api::MAX_VCPUS as u32;
pub const MIN_MEMORY_MIB: u32 = 64;
pub const MAX_MEMORY_MIB: u32 = hyper_vmm_api::MAX_MEMORY_MIB as u32;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SizingError {
    #[error("annotation {key}={value:?}: {why}")]
    Annotation {
        key: &'static str,
        value: String,
        why: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// The size of the VM for a pod whose first container has `spec`.
pub fn vm_size(
    config: &HypervisorConfig,
    spec: &oci_spec::runtime::Spec,
) -> Result<VmSize, SizingError> {
    let empty = HashMap::new();
    let annotations = spec.annotations().as_ref().unwrap_or(&empty);
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let (mut extra_cpus, mut extra_mib) = (0u32, 0u32);
    let num = |k: &str| {
        annotations
            .get(k)
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    if let Some(bytes) = num(CRI_SANDBOX_MEMORY).filter(|b| *b > 0) {
        extra_mib = mib(bytes as u64);
    } else if let Some(limit) = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
    {
        extra_mib = mib(limit as u64);
    }
    let cri_cpu = num(CRI_SANDBOX_CPU_QUOTA).zip(num(CRI_SANDBOX_CPU_PERIOD));
    let spec_cpu = resources
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| c.quota().zip(c.period().map(|p| p as i64)));
    if let Some((quota, period)) = cri_cpu.or(spec_cpu)
        && quota > 0
        && period > 0
    {
        extra_cpus = u32::try_from((quota + period - 1) / period).unwrap_or(MAX_VCPUS);
    }
    let mut size = VmSize {
        vcpus: config.vcpus.saturating_add(extra_cpus).min(MAX_VCPUS),
        memory_mib: config
            .memory_mib
            .saturating_add(extra_mib)
            .min(MAX_MEMORY_MIB),
    };
    if let Some(v) = annotations.get(ANNOTATION_VCPUS) {
        size.vcpus = parse(ANNOTATION_VCPUS, v, 1, MAX_VCPUS)?;
    }
    if let Some(v) = annotations.get(ANNOTATION_MEMORY_MIB) {
        size.memory_mib = parse(ANNOTATION_MEMORY_MIB, v, MIN_MEMORY_MIB, MAX_MEMORY_MIB)?;
    }
    Ok(size)
}

/// Whole MiB, rounded up.
fn mib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(MAX_MEMORY_MIB)
}

fn parse(key: &'static str, value: &str, min: u32, max: u32) -> Result<u32, SizingError> {
    let err = |why: String| SizingError::Annotation {
        key,
        value: value.to_string(),
        why,
    };
    let n: u32 = value
        .trim()
        .parse()
        .map_err(|_| err("not a whole number".into()))?;
    if n < min || n > max {
        return Err(err(format!("must be between {min} and {max}")));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(json).unwrap()
    }

    fn config() -> HypervisorConfig {
        HypervisorConfig {
            vcpus: 1,
            memory_mib: 256,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_without_limits() {
        let s = spec(serde_json::json!({"ociVersion": "1.0.2"}));
        assert_eq!(
            vm_size(&config(), &s).unwrap(),
            VmSize {
                vcpus: 1,
                memory_mib: 256
            }
        );
    }

    #[test]
    fn container_limits_are_added_to_the_defaults() {
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"resources": {
                "memory": {"limit": 100 * 1024 * 1024 + 1},
                "cpu": {"quota": 150_000, "period": 100_000}
            }}}),
        );
        assert_eq!(
            vm_size(&config(), &s).unwrap(),
            VmSize {
                vcpus: 3,
                memory_mib: 357
            }
        );
    }

    #[test]
    fn cri_pod_limits_win_over_the_container_and_annotations_over_both() {
        let mut s = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {
                "io.kubernetes.cri.sandbox-memory": "536870912",
                "io.kubernetes.cri.sandbox-cpu-quota": "200000",
                "io.kubernetes.cri.sandbox-cpu-period": "100000"
            },
            "linux": {"resources": {"memory": {"limit": 1048576}}}}));
        assert_eq!(
            vm_size(&config(), &s).unwrap(),
            VmSize {
                vcpus: 3,
                memory_mib: 768
            }
        );
        let a = s.annotations_mut().as_mut().unwrap();
        a.insert(ANNOTATION_VCPUS.into(), "2".into());
        a.insert(ANNOTATION_MEMORY_MIB.into(), "384".into());
        assert_eq!(
            vm_size(&config(), &s).unwrap(),
            VmSize {
                vcpus: 2,
                memory_mib: 384
            }
        );
    }

    #[test]
    fn bad_annotations_are_named() {
        for (k, v) in [
            (ANNOTATION_VCPUS, "0"),
            (ANNOTATION_VCPUS, "33"),
            (ANNOTATION_VCPUS, "two"),
            (ANNOTATION_MEMORY_MIB, "16"),
            (ANNOTATION_MEMORY_MIB, "-5"),
        ] {
            let s = spec(serde_json::json!({"ociVersion": "1.0.2", "annotations": {k: v}}));
            let e = vm_size(&config(), &s).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains(v), "{e}");
        }
    }
}
