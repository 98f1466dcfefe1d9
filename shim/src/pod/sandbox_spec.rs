//! What a pod's first container says about the pod. CRI marks its sandbox (pause)
//! container; that spec names the pod's network namespace (CNI's) and leaves out the
//! namespaces a pod shares with the host (hostNetwork, hostPID, hostIPC), which a pod in a
//! VM cannot do: those are refused, naming why.
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::path::PathBuf;

const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The namespaces a CRI sandbox must have of its own, and the pod setting that drops each.
const OWN_NAMESPACES: [(LinuxNamespaceType, &str, &str); 3] = [
    (LinuxNamespaceType::Network, "network", "hostNetwork"),
    (LinuxNamespaceType::Pid, "PID", "hostPID"),
    (LinuxNamespaceType::Ipc, "IPC", "hostIPC"),
];

/// The pod's network namespace on the host, if its first container names one; an error
/// naming the setting when a CRI sandbox wants one of the host's namespaces.
pub fn pod_netns(spec: &Spec) -> Result<Option<PathBuf>, String> {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let is_cri_sandbox = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(CONTAINER_TYPE))
        .is_some_and(|t| t == "sandbox");
    if is_cri_sandbox {
        for (typ, name, setting) in OWN_NAMESPACES {
            if !namespaces.iter().any(|n| n.typ() == typ) {
                return Err(format!(
                    "the pod asks for the host's {name} namespace ({setting}: true): a hyper pod \
                     runs in a VM of its own, which cannot share the host's namespaces; run \
                     this pod with another RuntimeClass (runc)"
                ));
            }
        }
    }
    Ok(namespaces
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone())
        .filter(|p| !p.as_os_str().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(sandbox: bool, namespaces: serde_json::Value) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"namespaces": namespaces},
        });
        if sandbox {
            v["annotations"] = serde_json::json!({CONTAINER_TYPE: "sandbox"});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pod_namespaces_of_the_first_container() {
        let all = serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
            {"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1"}]);
        let without = |t: &str| {
            let mut v = all.clone();
            v.as_array_mut().unwrap().retain(|n| n["type"] != t);
            v
        };
        type Want = Result<Option<&'static str>, &'static str>;
        let cases: [(&str, Spec, Want); 6] = [
            (
                "a CRI sandbox in CNI's namespace",
                spec(true, all.clone()),
                Ok(Some("/var/run/netns/cni-1")),
            ),
            (
                "hostNetwork",
                spec(true, without("network")),
                Err("the pod asks for the host's network namespace (hostNetwork: true)"),
            ),
            (
                "hostPID",
                spec(true, without("pid")),
                Err("the pod asks for the host's PID namespace (hostPID: true)"),
            ),
            (
                "hostIPC",
                spec(true, without("ipc")),
                Err("the pod asks for the host's IPC namespace (hostIPC: true)"),
            ),
            (
                "ctr, a new network namespace",
                spec(false, serde_json::json!([{"type": "network"}])),
                Ok(None),
            ),
            (
                "ctr in the host's network (no CRI sandbox)",
                spec(false, without("network")),
                Ok(None),
            ),
        ];
        for (case, spec, want) in cases {
            match (pod_netns(&spec), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want.map(PathBuf::from), "{case}"),
                (Err(e), Err(want)) => assert!(e.starts_with(want), "{case}: {e}"),
                (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
            }
        }
    }
}
