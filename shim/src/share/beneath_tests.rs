//! Each helper against symlinks, `..` and a concurrent rename swapping a directory for a
//! symlink to a place outside.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

struct Dirs {
    _tmp: tempfile::TempDir,
    inside: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let inside = tmp.path().join("inside");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(inside.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), "keep").unwrap();
    std::os::unix::fs::symlink(&outside, inside.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", inside.join("rel")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), inside.join("file-link")).unwrap();
    Dirs {
        _tmp: tmp,
        inside,
        outside,
    }
}

#[test]
fn lookups_refuse_symlinks_and_dot_dot() {
    let d = dirs();
    let root = open_dir(&d.inside).unwrap();
    for name in ["abs", "rel", "../outside", "sub/../../outside", "/etc"] {
        assert!(
            open_dir_beneath(root.as_fd(), Path::new(name)).is_err(),
            "{name}"
        );
        assert!(
            make_dir(root.as_fd(), OsStr::new(name), 0o755).is_err(),
            "{name}"
        );
    }
    assert!(open_dir_beneath(root.as_fd(), Path::new("sub")).is_ok());
    assert!(
        open_dir(&d.inside.join("abs")).is_err(),
        "open_dir followed a symlink"
    );
}

#[test]
fn files_are_never_made_through_a_symlink() {
    let d = dirs();
    let root = open_dir(&d.inside).unwrap();
    for name in ["file-link", "abs", "rel"] {
        assert!(
            make_file(root.as_fd(), OsStr::new(name), 0o644).is_err(),
            "{name}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(d.outside.join("victim")).unwrap(),
        "keep"
    );
    make_file(root.as_fd(), OsStr::new("plain"), 0o644).unwrap();
    assert!(d.inside.join("plain").is_file());
}

#[test]
fn mount_points_in_a_root_stay_inside_it() {
    let d = dirs();
    let root = open_dir(&d.inside).unwrap();
    // Symlinks resolve inside the root (where these lead nowhere: an error), `..` stops
    // at it; nothing is ever made outside.
    for (rel, file) in [
        ("abs/a", false),
        ("rel/b", true),
        ("file-link", true),
        ("abs", false),
    ] {
        let _ = make_path_in_root(root.as_fd(), Path::new(rel), file);
    }
    make_path_in_root(root.as_fd(), Path::new("../../c/d"), false).unwrap();
    make_path_in_root(root.as_fd(), Path::new("/etc/hosts"), true).unwrap();
    let outside = std::fs::read_dir(&d.outside).unwrap().count();
    assert_eq!(outside, 1, "something was made outside");
    assert_eq!(
        std::fs::read_to_string(d.outside.join("victim")).unwrap(),
        "keep"
    );
    assert!(d.inside.join("c/d").is_dir() && d.inside.join("etc/hosts").is_file());
}

#[test]
fn removal_deletes_symlinks_not_their_targets() {
    let d = dirs();
    let parent = open_dir(d.inside.parent().unwrap()).unwrap();
    remove_all(parent.as_fd(), OsStr::new("inside")).unwrap();
    assert!(!d.inside.exists());
    assert_eq!(
        std::fs::read_to_string(d.outside.join("victim")).unwrap(),
        "keep"
    );
}

/// Swaps `inside/sub` (a directory) with `inside/swap` (a symlink to `outside`) as fast
/// as it can, as a guest racing the shim would.
fn racer(d: &Dirs, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::os::unix::fs::symlink(&d.outside, d.inside.join("swap")).unwrap();
    let (a, b) = (d.inside.join("sub"), d.inside.join("swap"));
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            // Fails while the victim is being recreated; the next try goes on.
            let swapped = nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &a,
                nix::fcntl::AT_FDCWD,
                &b,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            );
            n += u64::from(swapped.is_ok());
        }
        n
    })
}

#[test]
fn a_racing_symlink_swap_never_leads_outside() {
    let d = dirs();
    let root = open_dir(&d.inside).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = racer(&d, stop.clone());
    let mut made = 0;
    for i in 0..20_000 {
        if let Ok(sub) = open_dir_beneath(root.as_fd(), Path::new("sub")) {
            let name = format!("f{i}");
            if make_file(sub.as_fd(), OsStr::new(&name), 0o644).is_ok() {
                made += 1;
            }
            let _ = make_dir(sub.as_fd(), OsStr::new(&format!("d{i}")), 0o755);
        }
        let _ = make_file(root.as_fd(), OsStr::new("sub/x"), 0o644);
        let _ = remove_all(root.as_fd(), OsStr::new("sub/x"));
    }
    stop.store(true, Ordering::Relaxed);
    let n = swaps.join().unwrap();
    assert!(n > 100, "the racer barely ran ({n} swaps)");
    assert!(made > 0, "nothing was made inside");
    let outside: Vec<_> = std::fs::read_dir(&d.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside,
        [std::ffi::OsString::from("victim")],
        "after {n} swaps"
    );
}

#[test]
fn a_racing_symlink_swap_never_deletes_outside() {
    let d = dirs();
    for i in 0..200 {
        std::fs::write(d.outside.join(format!("o{i}")), "keep").unwrap();
    }
    let parent = open_dir(&d.inside).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = racer(&d, stop.clone());
    for _ in 0..2_000 {
        for i in 0..5 {
            let _ = std::fs::write(d.inside.join(format!("sub/i{i}")), "x");
        }
        let _ = remove_all(parent.as_fd(), OsStr::new("sub"));
        let _ = std::fs::create_dir(d.inside.join("sub"));
    }
    stop.store(true, Ordering::Relaxed);
    let n = swaps.join().unwrap();
    assert!(n > 100, "the racer barely ran ({n} swaps)");
    // (The test's own plain writes may land outside through the swapped link; only the
    // removal is under test: it must not have taken anything from there.)
    for i in 0..200 {
        assert!(
            d.outside.join(format!("o{i}")).exists(),
            "o{i} deleted after {n} swaps"
        );
    }
    assert!(d.outside.join("victim").exists());
}
