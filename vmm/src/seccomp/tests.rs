//! Each kind's filter, installed on a thread of a child process: what the kind must never
//! do kills the process with SIGSYS, what it does every day still works.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::child::{Case, Outcome, run_cases};
use super::*;
use crate::devices::virtio::test_utils::check_cases;

/// Runs `body` on a thread of its own under `kind`'s filter and waits for it.
fn on_filtered_thread(kind: ThreadKind, body: impl FnOnce() + Send + 'static) {
    let filter = Arc::new(kind.compile().unwrap());
    let t = spawn_filtered(std::thread::Builder::new(), Some(filter), body).unwrap();
    t.join().unwrap();
}

/// A case that runs `body` under `kind`'s filter.
fn case(name: &'static str, kind: ThreadKind, body: impl FnOnce() + Send + 'static) -> Case {
    (name, Box::new(move || on_filtered_thread(kind, body)))
}

/// Runs `cases` in children and checks each ended as `want`.
fn expect_all(test: &str, cases: Vec<Case>, want: Outcome) {
    let results = run_cases(test, cases);
    check_cases(
        results
            .into_iter()
            .map(|(name, got, stderr)| (name, (got, stderr))),
        |(got, stderr)| assert_eq!(got, want, "stderr:\n{stderr}"),
    );
}

fn open_a_file() {
    // SAFETY: a NUL-terminated path; the fd, if any, is closed.
    unsafe {
        let fd = libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY);
        libc::close(fd);
    }
}

fn inet_socket() {
    // SAFETY: plain integers; the fd, if any, is closed.
    unsafe { libc::close(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)) };
}

fn exec_a_shell() {
    let argv = [c"/bin/sh".as_ptr(), std::ptr::null()];
    // SAFETY: NUL-terminated strings and a NULL-terminated argv.
    unsafe { libc::execv(c"/bin/sh".as_ptr(), argv.as_ptr()) };
}

fn executable_mapping() {
    // SAFETY: a fresh anonymous mapping, unmapped if it was made.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        libc::munmap(p, 4096);
    }
}

#[test]
fn a_forbidden_syscall_on_each_kind_of_thread_kills_the_process() {
    use ThreadKind::*;
    let cases = vec![
        case("vcpu opens a file", Vcpu, open_a_file),
        case("vcpu makes an inet socket", Vcpu, inet_socket),
        case("vcpu runs a shell", Vcpu, exec_a_shell),
        case("vcpu maps executable memory", Vcpu, executable_mapping),
        case("vcpu ioctl that is not KVM's", Vcpu, || {
            let mut ws = [0u16; 4];
            // SAFETY: TIOCGWINSZ writes a winsize into a buffer of that size.
            unsafe { libc::ioctl(2, libc::TIOCGWINSZ, ws.as_mut_ptr()) };
        }),
        case("vcpu spawns a thread", Vcpu, || {
            let _ = std::thread::spawn(|| {}).join();
        }),
        case("main opens a file", Main, open_a_file),
        case("main makes an inet socket", Main, inet_socket),
        case("main runs a shell", Main, exec_a_shell),
        case("main runs a vCPU", Main, || {
            // SAFETY: KVM_RUN on an fd that is not a vCPU; the filter decides first.
            unsafe { libc::ioctl(-1, kvm::KVM_RUN) };
        }),
        case("main signals a thread with SIGUSR1", Main, || {
            // SAFETY: the filter stops the call before it is made.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    libc::getpid(),
                    libc::gettid(),
                    libc::SIGUSR1,
                )
            };
        }),
        case("fs worker makes a unix socket", FsWorker, || {
            // SAFETY: plain integers; the fd, if any, is closed.
            unsafe { libc::close(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)) };
        }),
        case("fs worker runs a shell", FsWorker, exec_a_shell),
        case("fs worker opens by handle", FsWorker, || {
            // SAFETY: the filter stops the call before the kernel reads the handle.
            unsafe { libc::syscall(libc::SYS_open_by_handle_at, -1, 0usize, 0) };
        }),
        case("fs worker changes its real uid", FsWorker, || {
            // SAFETY: the filter stops the call before it is made.
            unsafe { libc::syscall(libc::SYS_setresuid, 1000, 1000, 1000) };
        }),
        case("fs worker makes an ioctl", FsWorker, || {
            let mut n = 0i32;
            // SAFETY: FIONREAD writes an int.
            unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) };
        }),
    ];
    expect_all(
        "seccomp::tests::a_forbidden_syscall_on_each_kind_of_thread_kills_the_process",
        cases,
        Outcome::Signalled(libc::SIGSYS),
    );
}

/// What every thread does: allocate, lock, wait, sleep, log, close.
fn everyday_life() {
    let v: Vec<u8> = vec![7; 64 << 20];
    assert_eq!(v[v.len() - 1], 7);
    drop(v);
    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let (lock, cv) = &*pair;
    let (g, _) = cv
        .wait_timeout(lock.lock().unwrap(), Duration::from_millis(5))
        .unwrap();
    drop(g);
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(2));
    assert!(t.elapsed() >= Duration::from_millis(2));
    eprintln!("a log line on stderr");
    tracing::info!("and one through tracing");
    let (a, b) = std::sync::mpsc::channel();
    a.send(1).unwrap();
    assert_eq!(b.recv().unwrap(), 1);
}

#[test]
fn what_each_kind_of_thread_does_every_day_still_works() {
    use ThreadKind::*;
    let mut cases: Vec<Case> = ThreadKind::ALL
        .iter()
        .map(|&k| {
            let name: &'static str = match k {
                Vcpu => "vcpu everyday life",
                Main => "main everyday life",
                FsWorker => "fs worker everyday life",
            };
            case(name, k, everyday_life)
        })
        .collect();
    cases.push(("vcpu runs KVM and accepts a vsock connection", {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        Box::new(move || {
            let listener = UnixListener::bind(&path).unwrap();
            listener.set_nonblocking(true).unwrap();
            let _client = UnixStream::connect(&path).unwrap();
            on_filtered_thread(Vcpu, move || {
                // EBADF, but allowed: the filter looks at the request only.
                // SAFETY: an ioctl on an invalid fd.
                assert_eq!(unsafe { libc::ioctl(-1, kvm::KVM_RUN) }, -1);
                let (s, _) = listener.accept().unwrap();
                s.set_nonblocking(true).unwrap();
            });
            drop(dir);
        })
    }));
    cases.push(("main serves sockets and reads randomness", {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.sock");
        Box::new(move || {
            let listener = UnixListener::bind(&path).unwrap();
            on_filtered_thread(Main, move || {
                // A guest-initiated vsock connection to a host listener.
                let mut out = UnixStream::connect(&path).unwrap();
                let (mut inn, _) = listener.accept().unwrap();
                inn.set_nonblocking(true).unwrap();
                out.write_all(b"ping").unwrap();
                let mut buf = [0u8; 4];
                std::thread::sleep(Duration::from_millis(5));
                inn.read_exact(&mut buf).unwrap();
                assert_eq!(&buf, b"ping");
                let mut r = [0u8; 16];
                // SAFETY: getrandom fills the buffer it is given.
                assert_eq!(unsafe { libc::getrandom(r.as_mut_ptr().cast(), 16, 0) }, 16);
                std::fs::remove_file(&path).unwrap();
            });
            drop(dir);
        })
    }));
    expect_all(
        "seccomp::tests::what_each_kind_of_thread_does_every_day_still_works",
        cases,
        Outcome::Exited(0),
    );
}

#[test]
fn a_failed_install_is_an_error_and_the_body_never_runs() {
    // The kernel refuses an empty program; seccompiler refuses it before.
    let ran = Arc::new(Mutex::new(false));
    let r = ran.clone();
    let err = spawn_filtered(
        std::thread::Builder::new(),
        Some(Arc::new(Vec::new())),
        move || *r.lock().unwrap() = true,
    )
    .unwrap_err();
    assert!(err.to_string().contains("seccomp"), "{err}");
    assert!(!*ran.lock().unwrap());
}

/// Syscalls that would let a compromised thread out of its box, allowed to no kind.
const ESCAPES: &[(i64, &str)] = allow_list::syscalls![
    SYS_execve,
    SYS_execveat,
    SYS_fork,
    SYS_vfork,
    SYS_clone,
    SYS_clone3,
    SYS_ptrace,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_mount,
    SYS_umount2,
    SYS_pivot_root,
    SYS_chroot,
    SYS_unshare,
    SYS_setns,
    SYS_open_by_handle_at,
    SYS_init_module,
    SYS_finit_module,
    SYS_kexec_load,
    SYS_bpf,
    SYS_perf_event_open,
    SYS_userfaultfd,
    SYS_io_uring_setup,
    SYS_keyctl,
    SYS_add_key,
    SYS_setuid,
    SYS_setgid,
    SYS_prctl,
    SYS_seccomp,
    SYS_reboot,
    SYS_kill,
];

#[test]
fn no_kind_allows_a_way_out() {
    let cases = ThreadKind::ALL.iter().flat_map(|&k| {
        ESCAPES
            .iter()
            .map(move |&(nr, name)| (format!("{}: {name}", k.name()), (k, nr)))
    });
    check_cases(cases, |(k, nr)| assert!(!k.allow_list().allows(nr)));
}

#[test]
fn every_filter_compiles_within_the_kernels_limit_and_the_sizes_are_reported() {
    for k in ThreadKind::ALL {
        let prog = k.compile().unwrap();
        // BPF_MAXINSNS.
        assert!(
            prog.len() <= 4096,
            "{}: {} instructions",
            k.name(),
            prog.len()
        );
        println!("{}: {} BPF instructions", k.name(), prog.len());
    }
    println!("{}", report());
    let lens: Vec<usize> = ThreadKind::ALL
        .iter()
        .map(|k| k.allow_list().len())
        .collect();
    // The vCPU does least and the fs worker most.
    assert!(lens[0] < lens[1] && lens[1] < lens[2], "{lens:?}");
}
