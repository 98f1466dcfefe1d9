//! The jail's steps on the host side, before the fork: joining the pod's cgroup, and
//! making sure mounts the host adds under a share later can reach the jail's copy.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{JailError, c_path, check, step_err};

/// Moves this process (and so every process and thread it starts) into the cgroup v2
/// directory `dir`, creating it if missing.
pub fn join_cgroup(dir: &Path) -> Result<(), JailError> {
    std::fs::create_dir_all(dir).map_err(step_err("create the cgroup", dir))?;
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, "0").map_err(step_err("join the cgroup through", &procs))
}

/// The jail's copy of a share is a slave of the host mount the share is on, or of that
/// mount's master: it receives the binds the shim adds under the share while the VM runs
/// only if that mount is shared or itself a slave (the shim's share is one). When it is
/// neither (no systemd, a private mount), the share is made a shared mount of its own
/// here: bound on itself (recursively, so what is already under it stays) and marked
/// shared. It stays so until whoever owns the share unmounts it.
pub fn let_mounts_propagate(share: &Path) -> Result<(), JailError> {
    let share = share
        .canonicalize()
        .map_err(step_err("find the share", share))?;
    let mount = mount_of(&share)?;
    if mount.receives_mounts {
        return Ok(());
    }
    let path = c_path(&share)?;
    if mount.mount_point != share {
        // SAFETY: both paths are NUL-terminated strings that live across the call.
        check(
            unsafe {
                libc::mount(
                    path.as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            }
            .into(),
        )
        .map_err(step_err("bind-mount on itself the share", &share))?;
    }
    // SAFETY: as above; MS_SHARED changes propagation only.
    check(
        unsafe {
            libc::mount(
                std::ptr::null(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED,
                std::ptr::null(),
            )
        }
        .into(),
    )
    .map_err(step_err("make a shared mount of the share", &share))?;
    tracing::debug!(share = %share.display(), "the share is now a shared mount");
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
struct MountInfo {
    mount_point: PathBuf,
    /// Shared or a slave: mounts made elsewhere can propagate to it, and so to copies.
    receives_mounts: bool,
}

/// The mount `path` is on, as this process's `/proc/self/mountinfo` describes it.
fn mount_of(path: &Path) -> Result<MountInfo, JailError> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(path)
        .map_err(step_err("open the share", path))?;
    let fdinfo = PathBuf::from(format!("/proc/self/fdinfo/{}", dir.as_raw_fd()));
    let text = std::fs::read_to_string(&fdinfo).map_err(step_err("read", &fdinfo))?;
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .map(|v| v.trim().to_string());
    let mountinfo = Path::new("/proc/self/mountinfo");
    let mut table = String::new();
    std::fs::File::open(mountinfo)
        .and_then(|mut f| f.read_to_string(&mut table))
        .map_err(step_err("read", mountinfo))?;
    id.and_then(|id| table.lines().find_map(|l| parse_line(l, &id)))
        .ok_or_else(|| {
            step_err("find the mount of", path)(std::io::Error::other(
                "not in /proc/self/mountinfo",
            ))
        })
}

/// The entry of a mountinfo line if its mount id is `id`: field 5 is the mount point,
/// optional fields (`shared:N`, `master:N`) follow field 6 up to `-`.
fn parse_line(line: &str, id: &str) -> Option<MountInfo> {
    let mut fields = line.split(' ');
    if fields.next()? != id {
        return None;
    }
    let mount_point = unescape(fields.nth(3)?);
    let receives_mounts = fields
        .skip(1)
        .take_while(|f| *f != "-")
        .any(|f| f.starts_with("shared:") || f.starts_with("master:"));
    Some(MountInfo {
        mount_point,
        receives_mounts,
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_mount_point_and_sharing() {
        let cases = [
            (
                "shared root",
                "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
                Some(("/", true)),
            ),
            (
                "private, escaped",
                "46 27 254:0 /b /a\\040b rw,relatime - ext4 /dev/vda rw",
                Some(("/a b", false)),
            ),
            (
                "slave and shared",
                "50 27 0:40 / /s rw shared:7 master:3 - tmpfs t rw",
                Some(("/s", true)),
            ),
            (
                "a slave only (the shim's share)",
                "50 27 0:40 / /s ro,nosuid master:3 - tmpfs t rw",
                Some(("/s", true)),
            ),
            (
                "a 'shared:' after the separator is not sharing",
                "51 27 0:40 / /x rw - shared:9 t rw",
                Some(("/x", false)),
            ),
            (
                "another id",
                "270 1 254:0 / / rw shared:1 - ext4 v rw",
                None,
            ),
            ("truncated", "27 1", None),
        ];
        for (name, line, want) in cases {
            let got = parse_line(line, "27")
                .or_else(|| parse_line(line, "46"))
                .or_else(|| parse_line(line, "50"))
                .or_else(|| parse_line(line, "51"));
            let want = want.map(|(p, receives_mounts)| MountInfo {
                mount_point: p.into(),
                receives_mounts,
            });
            assert_eq!(got, want, "case {name:?}");
        }
    }
}
