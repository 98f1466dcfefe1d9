//! Once the VM is built (KVM, memory, taps, disks and sockets open), hyper-vmm keeps only
//! the capabilities it still uses and can never regain the rest: a guest that took over
//! the process gets little more than the VM's own files.
//!
//! Runs on the main thread before any vCPU or device thread exists; threads inherit it.

use caps::{CapSet, Capability, CapsHashSet};

#[derive(Debug, thiserror::Error)]
#[error("cannot drop capabilities: {0}")]
pub struct PrivilegeError(String);

/// What serving a virtio-fs share as root needs: acting on files of any owner and mode,
/// and taking on the guest caller's fsuid/fsgid for what it creates.
const SHARE_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_MKNOD,
    Capability::CAP_SETFCAP,
];

/// Without a share the VMM only still connects to vsock sockets beside its own.
const BASE_CAPS: &[Capability] = &[Capability::CAP_DAC_OVERRIDE];

/// Most open files hyper-vmm asks for: a share holds an `O_PATH` descriptor for every inode
/// the guest has looked up (until it forgets it), so 1024 would stop an untar of a big tree.
const OPEN_FILES_WANTED: u64 = 1 << 20;

/// Lifts the open-file limit as far as allowed (what virtiofsd does too): to
/// `OPEN_FILES_WANTED` (or the kernel's nr_open) with CAP_SYS_RESOURCE, else to the hard
/// limit. Returns the new soft limit. Call before `drop_privileges`.
pub fn raise_open_files_limit() -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(OPEN_FILES_WANTED);
    let want = OPEN_FILES_WANTED.min(nr_open);
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one plain struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
        let both = |n| libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        if cur.rlim_max < want && libc::setrlimit(libc::RLIMIT_NOFILE, &both(want)) == 0 {
            return want;
        }
        // Without CAP_SYS_RESOURCE: the soft limit up to the hard one (or to `want`).
        let soft = libc::rlimit {
            rlim_cur: cur.rlim_max.min(want),
            rlim_max: cur.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return soft.rlim_cur;
        }
    }
    cur.rlim_cur
}

/// The capabilities kept when the VM has (or has not) a virtio-fs share.
pub fn kept(has_share: bool) -> CapsHashSet {
    let list = if has_share { SHARE_CAPS } else { BASE_CAPS };
    list.iter().copied().collect()
}

/// Drops every other capability from the bounding, permitted, effective, inheritable and
/// ambient sets of this thread, and sets no_new_privs.
pub fn drop_privileges(has_share: bool) -> Result<(), PrivilegeError> {
    let err = |e: caps::errors::CapsError| PrivilegeError(e.to_string());
    let permitted = caps::read(None, CapSet::Permitted).map_err(err)?;
    let keep: CapsHashSet = kept(has_share).intersection(&permitted).copied().collect();
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            // Dropping from the bounding set needs CAP_SETPCAP, so it comes first.
            caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
        }
    }
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(err)?;
    caps::set(None, CapSet::Effective, &keep).map_err(err)?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err)?;
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError(format!(
            "no_new_privs: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capability mask line (CapEff, CapBnd, ...) of this thread's status.
    fn mask(field: &str) -> u64 {
        let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with(field)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    }

    fn bits(set: &CapsHashSet) -> u64 {
        set.iter().map(|c| 1u64 << c.index()).sum()
    }

    #[test]
    fn the_open_files_limit_goes_up_to_what_is_allowed() {
        let mut before = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reads one plain struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut before) };
        let now = raise_open_files_limit();
        assert!(now >= before.rlim_cur);
        assert!(now >= before.rlim_max.min(OPEN_FILES_WANTED));
        let mut after = before;
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut after) };
        assert_eq!(after.rlim_cur, now);
    }

    #[test]
    fn only_the_kept_capabilities_survive_and_cannot_come_back() {
        // Capabilities are per thread: a thread of its own leaves the other tests alone.
        std::thread::spawn(|| {
            if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap() {
                eprintln!("skipped: needs CAP_SETPCAP (run as root)");
                return;
            }
            let before = mask("CapEff:");
            drop_privileges(true).unwrap();
            let keep = bits(&kept(true)) & before;
            assert_eq!(mask("CapEff:"), keep);
            assert_eq!(mask("CapPrm:"), keep);
            assert_eq!(mask("CapBnd:") & !keep, 0);
            assert_eq!(mask("NoNewPrivs:"), 1);
            assert!(caps::raise(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).is_err());
            assert!(!caps::has_cap(None, CapSet::Effective, Capability::CAP_NET_ADMIN).unwrap());
            // What the share needs still works: a file owned by someone else.
            let d = tempfile::tempdir().unwrap();
            let f = d.path().join("f");
            std::fs::write(&f, "x").unwrap();
            std::os::unix::fs::chown(&f, Some(1234), Some(1234)).unwrap();
        })
        .join()
        .unwrap();
    }
}
