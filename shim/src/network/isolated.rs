//! Taps with nothing behind them, for a VM template: it is saved with the network devices
//! of the pods that will restore it, but before any pod's network exists. The taps live
//! in a network namespace of their own, which no process joins and which goes away with
//! the returned handle (and every tap in it).
use std::fs::File;

use super::{NetworkError, TapDevice, tap};

/// `macs.len()` taps in a new network namespace; the file holds that namespace.
pub fn isolated_taps(macs: Vec<String>) -> Result<(File, Vec<TapDevice>), NetworkError> {
    // unshare(2) moves only the calling thread: a thread of our own, ended at once.
    std::thread::Builder::new()
        .name("isolated-net".into())
        .spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetworkError::Tap {
                    name: "(a network namespace of its own)".into(),
                    source: e.into(),
                }
            })?;
            let ns =
                File::open("/proc/thread-self/ns/net").map_err(|source| NetworkError::Tap {
                    name: "(a network namespace of its own)".into(),
                    source,
                })?;
            let taps = macs
                .into_iter()
                .enumerate()
                .map(|(i, mac)| {
                    let name = format!("tpl{i}");
                    let fd =
                        tap::create(&name).map_err(|source| NetworkError::Tap { name, source })?;
                    Ok(TapDevice { fd, mac })
                })
                .collect::<Result<Vec<_>, NetworkError>>()?;
            Ok((ns, taps))
        })
        .map_err(|source| NetworkError::Tap {
            name: "(a thread for the namespace)".into(),
            source,
        })?
        .join()
        .unwrap_or_else(|_| {
            Err(NetworkError::Tap {
                name: "(the namespace's thread panicked)".into(),
                source: std::io::Error::other("panic"),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The taps are in a namespace of their own (not ours), and vanish with it.
    #[test]
    fn taps_live_in_their_own_namespace_and_go_with_it() {
        if !nix::unistd::geteuid().is_root() || !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("skipped: needs root and /dev/net/tun");
            return;
        }
        let (ns, taps) =
            isolated_taps(vec!["02:68:79:00:00:00".into(), "02:68:79:00:00:01".into()]).unwrap();
        assert_eq!(taps.len(), 2);
        let ours = std::fs::metadata("/proc/self/ns/net").unwrap();
        let theirs = ns.metadata().unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            ours.ino(),
            theirs.ino(),
            "the taps are in the shim's own namespace"
        );
        let links = std::fs::read_to_string("/proc/net/dev").unwrap();
        assert!(!links.contains("tpl0:"), "tpl0 is visible here: {links}");
        let there = std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
        })
        .join()
        .unwrap();
        assert!(
            there.contains("tpl0:") && there.contains("tpl1:"),
            "{there}"
        );
    }
}
