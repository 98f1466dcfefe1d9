//! The fds the process that started hyper-vmm passed in by number (`net fd=N`), claimed
//! before the VMM opens anything of its own: a number that was not passed would
//! otherwise be reused by the VMM's first eventfd, and the device would adopt that.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::config::VmConfig;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InheritedFdError {
    #[error("net{index}: fd={fd} is not one hyper-vmm can take (0, 1 and 2 are its stdio)")]
    Stdio { index: usize, fd: RawFd },
    #[error("net{index}: fd={fd} is named twice (also by net{first})")]
    Twice {
        index: usize,
        first: usize,
        fd: RawFd,
    },
    #[error(
        "net{index}: fd={fd} is not open in hyper-vmm: the process that starts it must pass \
         that fd without close-on-exec"
    )]
    NotOpen { index: usize, fd: RawFd },
    #[error("net{index}: fd={fd} was not claimed at start (or is taken twice)")]
    NotClaimed { index: usize, fd: RawFd },
}

/// The claimed fds, by number, until their devices take them.
#[derive(Debug, Default)]
pub struct InheritedFds {
    fds: BTreeMap<RawFd, OwnedFd>,
}

impl InheritedFds {
    /// Takes ownership of every fd `cfg` names, checking each is open. Call first thing
    /// in `main`, before anything else opens an fd.
    pub fn claim(cfg: &VmConfig) -> Result<Self, InheritedFdError> {
        let mut named: BTreeMap<RawFd, usize> = BTreeMap::new();
        for (index, fd) in net_fds(cfg) {
            if fd <= 2 {
                return Err(InheritedFdError::Stdio { index, fd });
            }
            if let Some(&first) = named.get(&fd) {
                return Err(InheritedFdError::Twice { index, first, fd });
            }
            // SAFETY: F_GETFD only reads the fd's flags; it fails on a closed number.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(InheritedFdError::NotOpen { index, fd });
            }
            named.insert(fd, index);
        }
        let fds = named
            .into_keys()
            // SAFETY: each fd is open (checked above), named once, and passed to this
            // process to own; nothing else in it has wrapped them.
            .map(|fd| (fd, unsafe { OwnedFd::from_raw_fd(fd) }))
            .collect();
        Ok(InheritedFds { fds })
    }

    /// The numbers still held (for the jail, which closes every other inherited fd).
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.keys().copied().collect()
    }

    /// Hands net device `index`'s fd to it.
    pub fn take_net(&mut self, index: usize, fd: RawFd) -> Result<OwnedFd, InheritedFdError> {
        self.fds
            .remove(&fd)
            .ok_or(InheritedFdError::NotClaimed { index, fd })
    }
}

fn net_fds(cfg: &VmConfig) -> impl Iterator<Item = (usize, RawFd)> + '_ {
    cfg.net
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.fd.map(|fd| (i, fd)))
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, IntoRawFd};

    use super::*;
    use crate::config::parse_net;

    fn cfg_with(fds: &[RawFd]) -> VmConfig {
        let mut cfg = VmConfig::new("/vmlinux".into());
        for fd in fds {
            cfg.net.push(parse_net(&format!("fd={fd}")).unwrap());
        }
        cfg
    }

    #[test]
    fn refusals_name_the_device_and_fd() {
        let open = std::fs::File::open("/dev/null").unwrap();
        let fd = open.as_raw_fd();
        let cases = [
            (
                "stdio",
                vec![1],
                InheritedFdError::Stdio { index: 0, fd: 1 },
            ),
            (
                "twice",
                vec![fd, fd],
                InheritedFdError::Twice {
                    index: 1,
                    first: 0,
                    fd,
                },
            ),
            (
                // Above any open-file limit, so never open.
                "not open",
                vec![i32::MAX - 1],
                InheritedFdError::NotOpen {
                    index: 0,
                    fd: i32::MAX - 1,
                },
            ),
        ];
        for (name, fds, want) in cases {
            assert_eq!(
                InheritedFds::claim(&cfg_with(&fds)).unwrap_err(),
                want,
                "case {name}"
            );
        }
    }

    #[test]
    fn claimed_fds_are_owned_and_taken_once() {
        let fd = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let mut fds = InheritedFds::claim(&cfg_with(&[fd])).unwrap();
        assert_eq!(fds.raw_fds(), vec![fd]);
        let owned = fds.take_net(0, fd).unwrap();
        assert_eq!(owned.as_raw_fd(), fd);
        assert!(fds.raw_fds().is_empty());
        assert_eq!(
            fds.take_net(0, fd).unwrap_err(),
            InheritedFdError::NotClaimed { index: 0, fd }
        );
    }
}
