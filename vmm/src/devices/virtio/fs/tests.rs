//! The device driven the way the guest's virtio-fs driver drives it: FUSE requests in
//! guest memory, descriptor chains on the request queue, replies read back from the used
//! ring. Covers serving a real directory, escapes from it, and hostile requests.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vm_memory_017::ByteValued;

use super::device::{Fs, RESET_WAIT};
use crate::config::{FsCacheMode, FsConfig};
use crate::devices::virtio::device::{ActivateContext, VirtioDevice};
use crate::devices::virtio::test_utils::{
    VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, check_cases, test_ctl, test_irq,
};
use crate::devices::virtio::{Interrupt, TYPE_FS, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::metrics::DeviceCounters;
use crate::seccomp::child::{Outcome, in_child};
use crate::seccomp::{BpfProgram, ThreadKind};

const QSIZE: u16 = 64;
const RING_BASE: [u64; 2] = [0x1_0000, 0x2_0000];
const REQ_BUF: u64 = 1 << 20;
const REPLY_BUF: u64 = 4 << 20;
const REPLY_CAP: u32 = 2 << 20;

struct Driver {
    mem: GuestMemoryMmap,
    fs: Fs,
    counters: Arc<DeviceCounters>,
    avail: [u16; 2],
    unique: u64,
    /// The uid and gid requests carry (root when `None`).
    as_user: Option<u32>,
    /// The interrupt of the current activation.
    interrupt: Option<Arc<Interrupt>>,
}

/// A reply: the FUSE error (0 or a negative errno) and the bytes after the header.
#[derive(Debug)]
struct Reply {
    error: i32,
    body: Vec<u8>,
}

fn avail_addr(q: usize) -> u64 {
    RING_BASE[q] + 16 * u64::from(QSIZE)
}
fn used_addr(q: usize) -> u64 {
    (avail_addr(q) + 6 + 2 * u64::from(QSIZE) + 3) & !3
}

impl Driver {
    fn new(share: &Path, cache: FsCacheMode) -> Self {
        Self::with_filter(share, cache, None)
    }

    /// A driver whose device worker runs under `filter`.
    fn with_filter(share: &Path, cache: FsCacheMode, filter: Option<Arc<BpfProgram>>) -> Self {
        let mut d = Self::unactivated(share, cache, filter);
        d.activate();
        d
    }

    /// A driver that has not set DRIVER_OK yet.
    fn unactivated(share: &Path, cache: FsCacheMode, filter: Option<Arc<BpfProgram>>) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let counters = Arc::new(DeviceCounters::default());
        let cfg = FsConfig {
            tag: "share".into(),
            shared_dir: share.to_path_buf(),
            cache,
            writeback: false,
            xattr: true,
        };
        let (fs, worker) = Fs::new("fs0", &cfg, counters.clone()).unwrap();
        worker.spawn(filter).unwrap();
        Driver {
            mem,
            fs,
            counters,
            avail: [0; 2],
            unique: 0,
            as_user: None,
            interrupt: None,
        }
    }

    /// What the guest driver does on DRIVER_OK and its mount: fresh rings, activation,
    /// FUSE INIT.
    fn activate(&mut self) {
        self.activate_queues();
        self.init();
    }

    /// The driver's DRIVER_OK: fresh rings, activation.
    fn activate_queues(&mut self) {
        for q in 0..2 {
            // Zero the ring headers: the device starts from index 0 again.
            self.mem
                .write_slice(&[0u8; 4], GuestAddress(avail_addr(q)))
                .unwrap();
            self.mem
                .write_slice(&[0u8; 4], GuestAddress(used_addr(q)))
                .unwrap();
        }
        self.avail = [0; 2];
        let queues = (0..2)
            .map(|i| {
                let mut q = Queue::new(1024).unwrap();
                q.set_size(QSIZE);
                q.set_desc_table_address(Some(RING_BASE[i] as u32), Some(0));
                q.set_avail_ring_address(Some(avail_addr(i) as u32), Some(0));
                q.set_used_ring_address(Some(used_addr(i) as u32), Some(0));
                q.set_ready(true);
                q
            })
            .collect();
        let interrupt = Interrupt::new(test_irq());
        self.interrupt = Some(interrupt.clone());
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            queues,
            interrupt,
        };
        self.fs.activate(ctx, &test_ctl()).unwrap();
    }

    /// The mount's first request.
    fn init(&mut self) {
        self.init_with(0);
    }

    /// INIT with the kernel offering `flags`; returns the device's answer.
    fn init_with(&mut self, flags: u32) -> InitOut {
        let init = InitIn {
            major: KERNEL_VERSION,
            minor: KERNEL_MINOR_VERSION,
            max_readahead: 128 << 10,
            flags,
        };
        let r = self.call(Opcode::Init as u32, 0, init.as_slice());
        assert_eq!(r.error, 0, "INIT failed");
        *InitOut::from_slice(&r.body[..std::mem::size_of::<InitOut>()]).unwrap()
    }

    /// Whether the device raises its interrupt within `wait` (it does so just after
    /// publishing a reply, so a reply seen is not yet an interrupt seen).
    fn interrupted_within(&self, wait: Duration) -> bool {
        let irq = self.interrupt.as_ref().expect("activated").irq_evt();
        let deadline = Instant::now() + wait;
        loop {
            if irq.read().is_ok() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Puts one chain of (addr, len, flags) on queue `q`, notifies, and waits for the
    /// device to return it; returns the used length.
    fn submit(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u32 {
        let idx = self.post(q, descs);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx(q) != self.avail[q] {
            assert!(Instant::now() < deadline, "device did not answer in 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
        let elem = used_addr(q) + 4 + 8 * u64::from(idx % QSIZE);
        self.mem.read_obj(GuestAddress(elem + 4)).unwrap()
    }

    /// How many chains the device has returned on queue `q`.
    fn used_idx(&self, q: usize) -> u16 {
        self.mem.read_obj(GuestAddress(used_addr(q) + 2)).unwrap()
    }

    /// Puts one chain on queue `q` and notifies, without waiting; returns its avail index.
    fn post(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let at = GuestAddress(RING_BASE[q] + 16 * i as u64);
            self.mem.write_obj(addr, at).unwrap();
            self.mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
            self.mem
                .write_obj((i + 1) as u16, GuestAddress(at.0 + 14))
                .unwrap();
        }
        let idx = self.avail[q];
        let slot = avail_addr(q) + 4 + 2 * u64::from(idx % QSIZE);
        self.mem.write_obj(0u16, GuestAddress(slot)).unwrap();
        self.avail[q] = idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail[q], GuestAddress(avail_addr(q) + 2))
            .unwrap();
        self.fs.queue_notify(q, &test_ctl()).unwrap();
        idx
    }

    /// The request and reply chain for `request` with `cap` bytes of reply room.
    fn request_chain(&self, request: &[u8], cap: u32) -> [(u64, u32, u16); 2] {
        self.mem
            .write_slice(request, GuestAddress(REQ_BUF))
            .unwrap();
        [
            (REQ_BUF, request.len() as u32, VRING_DESC_F_NEXT),
            (REPLY_BUF, cap, VRING_DESC_F_WRITE),
        ]
    }

    /// Sends raw request bytes (header included) with a reply buffer of `cap` bytes.
    fn raw(&mut self, request: &[u8], cap: u32) -> Option<Reply> {
        let chain = self.request_chain(request, cap);
        let n = self.submit(1, &chain);
        self.read_reply(n)
    }

    fn read_reply(&self, used: u32) -> Option<Reply> {
        if (used as usize) < std::mem::size_of::<OutHeader>() {
            return None;
        }
        let mut bytes = vec![0u8; used as usize];
        self.mem
            .read_slice(&mut bytes, GuestAddress(REPLY_BUF))
            .unwrap();
        let error = i32::from_le_bytes(bytes[4..8].try_into().unwrap());
        Some(Reply {
            error,
            body: bytes[16..].to_vec(),
        })
    }

    fn request(&mut self, opcode: u32, nodeid: u64, payload: &[u8]) -> Vec<u8> {
        self.unique += 1;
        let h = InHeader {
            len: (std::mem::size_of::<InHeader>() + payload.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: self.as_user.unwrap_or(0),
            gid: self.as_user.unwrap_or(0),
            pid: 1,
            padding: 0,
        };
        let mut req = h.as_slice().to_vec();
        req.extend_from_slice(payload);
        req
    }

    fn call(&mut self, opcode: u32, nodeid: u64, payload: &[u8]) -> Reply {
        let req = self.request(opcode, nodeid, payload);
        self.raw(&req, REPLY_CAP).expect("no reply")
    }

    fn entry(&mut self, opcode: Opcode, parent: u64, payload: &[u8]) -> Result<EntryOut, i32> {
        let r = self.call(opcode as u32, parent, payload);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(
            EntryOut::from_slice(&r.body[..std::mem::size_of::<EntryOut>()])
                .copied()
                .unwrap(),
        )
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        self.entry(Opcode::Lookup, parent, &cstr(name))
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let mut p = MkdirIn {
            mode: 0o755,
            umask: 0,
        }
        .as_slice()
        .to_vec();
        p.extend(cstr(name));
        self.entry(Opcode::Mkdir, parent, &p)
    }

    fn symlink(&mut self, parent: u64, name: &str, target: &str) -> Result<EntryOut, i32> {
        let mut p = cstr(name);
        p.extend(cstr(target));
        self.entry(Opcode::Symlink, parent, &p)
    }

    /// CREATE of a file open for reading and writing: its entry and its open reply.
    fn create(&mut self, parent: u64, name: &str) -> Result<(EntryOut, OpenOut), i32> {
        let mut p = CreateIn {
            flags: (libc::O_RDWR | libc::O_CREAT) as u32,
            mode: 0o644,
            umask: 0,
            fuse_flags: 0,
        }
        .as_slice()
        .to_vec();
        p.extend(cstr(name));
        let r = self.call(Opcode::Create as u32, parent, &p);
        if r.error != 0 {
            return Err(-r.error);
        }
        let at = std::mem::size_of::<EntryOut>();
        let e = EntryOut::from_slice(&r.body[..at]).copied().unwrap();
        let o = OpenOut::from_slice(&r.body[at..at + 16]).copied().unwrap();
        Ok((e, o))
    }

    /// CREATE + WRITE + RELEASE of a whole file.
    fn create_file(&mut self, parent: u64, name: &str, data: &[u8]) -> Result<u64, i32> {
        let (e, o) = self.create(parent, name)?;
        let w = self.write(e.nodeid, o.fh, 0, data);
        assert_eq!(w, Ok(data.len() as u32));
        self.release(e.nodeid, o.fh);
        Ok(e.nodeid)
    }

    fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
        let p = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let r = self.call(Opcode::Open as u32, nodeid, p.as_slice());
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(OpenOut::from_slice(&r.body[..16]).unwrap().fh)
    }

    fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let p = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let r = self.call(Opcode::Read as u32, nodeid, p.as_slice());
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(r.body)
    }

    fn write(&mut self, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let mut p = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        }
        .as_slice()
        .to_vec();
        p.extend_from_slice(data);
        let r = self.call(Opcode::Write as u32, nodeid, &p);
        if r.error != 0 {
            return Err(-r.error);
        }
        Ok(WriteOut::from_slice(&r.body[..8]).unwrap().size)
    }

    fn release(&mut self, nodeid: u64, fh: u64) {
        let p = ReleaseIn {
            fh,
            ..Default::default()
        };
        assert_eq!(
            self.call(Opcode::Release as u32, nodeid, p.as_slice())
                .error,
            0
        );
    }

    fn read_file(&mut self, nodeid: u64) -> Result<Vec<u8>, i32> {
        let fh = self.open(nodeid, libc::O_RDONLY)?;
        let data = self.read(nodeid, fh, 0, 1 << 20);
        self.release(nodeid, fh);
        data
    }
}

fn cstr(s: &str) -> Vec<u8> {
    CString::new(s).unwrap().into_bytes_with_nul()
}

/// A share inside a scratch directory that also holds a file outside the share.
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let share = d.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(d.path().join("secret"), "outside").unwrap();
    std::fs::write(share.join("hello"), "hello from the host\n").unwrap();
    (d, share)
}

#[test]
fn config_space_names_the_tag_and_one_request_queue() {
    let (_d, share) = scratch();
    let cfg = FsConfig {
        tag: "myshare".into(),
        shared_dir: share,
        cache: FsCacheMode::Auto,
        writeback: false,
        xattr: true,
    };
    let (fs, _worker) = Fs::new("fs0", &cfg, Arc::default()).unwrap();
    assert_eq!(fs.device_type(), TYPE_FS);
    assert_eq!(fs.queue_max_sizes().len(), 2);
    let mut cs = [0u8; 40];
    fs.read_config(0, &mut cs);
    assert_eq!(&cs[..7], b"myshare");
    assert!(cs[7..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(cs[36..40].try_into().unwrap()), 1);
}

#[test]
fn only_a_share_the_guest_has_not_mounted_is_saved() {
    let (_d, share) = scratch();
    let mut drv = Driver::unactivated(&share, FsCacheMode::None, None);
    assert!(drv.fs.queue_states().unwrap().is_empty(), "inactive");
    drv.activate_queues();
    let states = drv.fs.queue_states().unwrap();
    assert_eq!(states.len(), 2);
    assert!(
        states
            .iter()
            .all(|q| q.ready && q.size == QSIZE && q.next_avail == 0 && q.next_used == 0),
        "{states:?}"
    );
    drv.init();
    let err = drv.fs.queue_states().unwrap_err();
    assert!(err.contains("fs0 has answered 1 FUSE requests"), "{err}");
}

#[test]
fn serves_the_share_both_ways() {
    let (_d, share) = scratch();
    let mut drv = Driver::new(&share, FsCacheMode::None);
    let hello = drv.lookup(ROOT_ID, "hello").unwrap();
    assert_eq!(hello.attr.size, 20);
    assert_eq!(
        drv.read_file(hello.nodeid).unwrap(),
        b"hello from the host\n"
    );

    // The guest writes; the host sees it.
    let dir = drv.mkdir(ROOT_ID, "made-by-guest").unwrap();
    drv.create_file(dir.nodeid, "f", b"guest data").unwrap();
    assert_eq!(
        std::fs::read(share.join("made-by-guest/f")).unwrap(),
        b"guest data"
    );
    // The host writes; the guest sees it (no caching in this mode).
    std::fs::write(share.join("hello"), "changed on the host\n").unwrap();
    assert_eq!(
        drv.read_file(hello.nodeid).unwrap(),
        b"changed on the host\n"
    );
    // Ownership and modes are the host's.
    let meta = std::fs::metadata(share.join("made-by-guest")).unwrap();
    assert_eq!(dir.attr.mode & 0o7777, meta.permissions().mode() & 0o7777);
    assert_eq!(dir.attr.uid, meta.uid());
    // A symlink made by the guest is a plain symlink on the host.
    drv.symlink(ROOT_ID, "link", "hello").unwrap();
    assert_eq!(
        std::fs::read_link(share.join("link")).unwrap(),
        Path::new("hello")
    );
    assert_eq!(
        drv.lookup(ROOT_ID, "missing").unwrap_err(),
        libc::ENOENT,
        "a missing name"
    );
}

#[test]
fn extended_attributes_pass_through() {
    let (_d, share) = scratch();
    let path = CString::new(share.join("hello").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.from-host".as_ptr(),
            b"hv".as_ptr().cast(),
            2,
            0,
        )
    };
    if rc != 0 {
        eprintln!(
            "skipped: the scratch file system has no user xattrs ({})",
            std::io::Error::last_os_error()
        );
        return;
    }
    let mut drv = Driver::new(&share, FsCacheMode::None);
    let hello = drv.lookup(ROOT_ID, "hello").unwrap();
    let mut get = GetxattrIn {
        size: 64,
        padding: 0,
    }
    .as_slice()
    .to_vec();
    get.extend(cstr("user.from-host"));
    let r = drv.call(Opcode::Getxattr as u32, hello.nodeid, &get);
    assert_eq!((r.error, r.body.as_slice()), (0, &b"hv"[..]));
    let mut set = SetxattrIn { size: 5, flags: 0 }.as_slice().to_vec();
    set.extend(cstr("user.from-guest"));
    set.extend(b"guest");
    assert_eq!(
        drv.call(Opcode::Setxattr as u32, hello.nodeid, &set).error,
        0
    );
    let mut buf = [0u8; 16];
    // SAFETY: as above.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.from-guest".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..n.max(0) as usize], b"guest");
}

/// A hostile request and the checks on its answer, run against one driver in table order.
type Case<'a> = (String, Box<dyn Fn(&mut Driver) + 'a>);

fn case<'a>(name: &str, check: impl Fn(&mut Driver) + 'a) -> Case<'a> {
    (name.to_string(), Box::new(check))
}

#[test]
fn the_guest_cannot_leave_the_share() {
    let (d, share) = scratch();
    std::os::unix::fs::symlink("/", share.join("abs")).unwrap();
    std::os::unix::fs::symlink("..", share.join("up")).unwrap();
    let mut drv = Driver::new(&share, FsCacheMode::None);

    let cases = [
        case("'..' of the root is the root itself", |drv| {
            let root = drv.lookup(ROOT_ID, ".").unwrap();
            let parent = drv.lookup(ROOT_ID, "..").unwrap();
            assert_eq!(parent.attr.ino, root.attr.ino);
            assert_eq!(
                drv.lookup(parent.nodeid, "secret").unwrap_err(),
                libc::ENOENT
            );
        }),
        // Names with a slash are not one component.
        case("lookup ../secret", |drv| {
            assert_eq!(drv.lookup(ROOT_ID, "../secret").unwrap_err(), libc::EINVAL);
        }),
        case("lookup /etc", |drv| {
            assert_eq!(drv.lookup(ROOT_ID, "/etc").unwrap_err(), libc::EINVAL);
        }),
        // Symlinks are never followed on the host.
        case("through a symlink to /", |drv| {
            let abs = drv.lookup(ROOT_ID, "abs").unwrap();
            assert_eq!(abs.attr.mode & libc::S_IFMT, libc::S_IFLNK);
            assert!(drv.lookup(abs.nodeid, "etc").is_err());
            assert!(drv.open(abs.nodeid, libc::O_RDONLY).is_err());
        }),
        case("through a symlink to ..", |drv| {
            let up = drv.lookup(ROOT_ID, "up").unwrap();
            assert!(drv.lookup(up.nodeid, "secret").is_err());
            assert!(drv.mkdir(up.nodeid, "x").is_err());
        }),
        // Nothing can be made, moved or linked out of the share.
        case("mkdir ../escape", |drv| {
            assert_eq!(drv.mkdir(ROOT_ID, "../escape").unwrap_err(), libc::EINVAL);
        }),
        case("mkdir ..", |drv| {
            assert_eq!(drv.mkdir(ROOT_ID, "..").unwrap_err(), libc::EINVAL);
        }),
        case("create ../escape", |drv| {
            assert_eq!(
                drv.create_file(ROOT_ID, "../escape", b"x").unwrap_err(),
                libc::EINVAL
            );
        }),
        case("symlink ../escape", |drv| {
            assert_eq!(
                drv.symlink(ROOT_ID, "../escape", "/").unwrap_err(),
                libc::EINVAL
            );
        }),
        case("rename to ../moved", |drv| {
            let mut rename = RenameIn { newdir: ROOT_ID }.as_slice().to_vec();
            rename.extend(cstr("hello"));
            rename.extend(cstr("../moved"));
            assert_eq!(
                drv.call(Opcode::Rename as u32, ROOT_ID, &rename).error,
                -libc::EINVAL
            );
        }),
        case("link as ../linked", |drv| {
            let hello = drv.lookup(ROOT_ID, "hello").unwrap();
            let mut link = LinkIn {
                oldnodeid: hello.nodeid,
            }
            .as_slice()
            .to_vec();
            link.extend(cstr("../linked"));
            assert_eq!(
                drv.call(Opcode::Link as u32, ROOT_ID, &link).error,
                -libc::EINVAL
            );
        }),
        // Last, so it runs whatever failed before it.
        case("nothing changed beside the share", |_| {
            let entries: Vec<_> = std::fs::read_dir(d.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                entries.len(),
                2,
                "nothing appeared beside the share: {entries:?}"
            );
            assert_eq!(std::fs::read(d.path().join("secret")).unwrap(), b"outside");
            assert!(share.join("hello").exists());
        }),
    ];
    check_cases(cases, |check| check(&mut drv));
}

/// A LOOKUP of "hello" without its NUL, the header's length overwritten with `len`.
fn lookup_with_len(drv: &mut Driver, len: Option<u32>) -> Vec<u8> {
    let mut req = drv.request(Opcode::Lookup as u32, ROOT_ID, b"hello");
    if let Some(len) = len {
        req[0..4].copy_from_slice(&len.to_le_bytes());
    }
    req
}

#[test]
fn hostile_requests_get_error_replies_and_the_device_keeps_serving() {
    let (_d, share) = scratch();
    let mut drv = Driver::new(&share, FsCacheMode::Auto);

    // Unknown and unassigned opcodes.
    let mut cases: Vec<Case> = [7u32, 19, 50, 4096, u32::MAX]
        .into_iter()
        .map(|op| {
            case(&format!("opcode {op}"), move |drv| {
                assert_eq!(
                    drv.call(op, ROOT_ID, &[]).error,
                    -libc::ENOSYS,
                    "opcode {op}"
                );
            })
        })
        .collect();
    cases.extend([
        // Unknown inodes and handles.
        case("lookup in an unknown inode", |drv| {
            assert!(drv.lookup(0xdead_beef, "x").is_err());
        }),
        case("getattr of inode 0", |drv| {
            assert!(drv.call(Opcode::Getattr as u32, 0, &[0; 16]).error < 0);
        }),
        case("read with an unknown handle", |drv| {
            assert_eq!(
                drv.read(ROOT_ID, 0x1234_5678, 0, 10).unwrap_err(),
                libc::EBADF
            );
        }),
        // Each of these gets an error reply, so a driver never waits for an answer that
        // never comes.
        case("a name without its NUL", |drv| {
            let req = lookup_with_len(drv, None);
            assert!(drv.raw(&req, REPLY_CAP).unwrap().error < 0);
        }),
        case("a body shorter than its struct", |drv| {
            let req = drv.request(Opcode::Mkdir as u32, ROOT_ID, &[1, 2]);
            assert!(drv.raw(&req, REPLY_CAP).unwrap().error < 0);
        }),
        case("an xattr value shorter than its size", |drv| {
            let mut xattr = SetxattrIn { size: 99, flags: 0 }.as_slice().to_vec();
            xattr.extend(cstr("user.x"));
            xattr.extend(b"short");
            let req = drv.request(Opcode::Setxattr as u32, ROOT_ID, &xattr);
            assert_eq!(drv.raw(&req, REPLY_CAP).unwrap().error, -libc::EINVAL);
        }),
        // fuse-backend-rs would allocate what these ask for before anything else.
        case("getxattr asking for 4 GiB", |drv| {
            let mut body = GetxattrIn {
                size: u32::MAX,
                padding: 0,
            }
            .as_slice()
            .to_vec();
            body.extend(cstr("user.x"));
            let req = drv.request(Opcode::Getxattr as u32, ROOT_ID, &body);
            assert_eq!(drv.raw(&req, REPLY_CAP).unwrap().error, -libc::E2BIG);
        }),
        case("listxattr asking for 64 KiB + 1", |drv| {
            let body = GetxattrIn {
                size: (1 << 16) + 1,
                padding: 0,
            };
            let req = drv.request(Opcode::Listxattr as u32, ROOT_ID, body.as_slice());
            assert_eq!(drv.raw(&req, REPLY_CAP).unwrap().error, -libc::E2BIG);
        }),
        case("a length past the request", |drv| {
            let req = lookup_with_len(drv, Some(u32::MAX));
            assert!(drv.raw(&req, REPLY_CAP).unwrap().error < 0);
        }),
        case("a length inside the header", |drv| {
            let req = lookup_with_len(drv, Some(3));
            assert!(drv.raw(&req, REPLY_CAP).unwrap().error < 0);
        }),
        case("a header cut short", |drv| {
            let req = lookup_with_len(drv, Some(3));
            assert!(drv.raw(&req[..10], REPLY_CAP).is_none());
        }),
        case("too little reply room", |drv| {
            let ok = drv.request(Opcode::Lookup as u32, ROOT_ID, &cstr("hello"));
            assert!(drv.raw(&ok, 8).is_none());
        }),
        case("no reply room at all", |drv| {
            let ok = drv.request(Opcode::Lookup as u32, ROOT_ID, &cstr("hello"));
            drv.mem.write_slice(&ok, GuestAddress(REQ_BUF)).unwrap();
            let n = drv.submit(1, &[(REQ_BUF, ok.len() as u32, 0)]);
            assert_eq!(n, 0);
        }),
        case("buffers outside guest memory", |drv| {
            let n = drv.submit(
                1,
                &[
                    (0xffff_0000_0000, 64, VRING_DESC_F_NEXT),
                    (REPLY_BUF, 64, VRING_DESC_F_WRITE),
                ],
            );
            assert_eq!(n, 0);
        }),
        case("a WRITE whose size claims more than it carries", |drv| {
            let p = WriteIn {
                fh: 1,
                size: 1 << 20,
                ..Default::default()
            };
            assert!(drv.call(Opcode::Write as u32, ROOT_ID, p.as_slice()).error < 0);
        }),
        case("FORGET on the hiprio queue gets no reply", |drv| {
            let forget = drv.request(
                Opcode::Forget as u32,
                0xdead,
                ForgetIn { nlookup: 5 }.as_slice(),
            );
            drv.mem.write_slice(&forget, GuestAddress(REQ_BUF)).unwrap();
            assert_eq!(drv.submit(0, &[(REQ_BUF, forget.len() as u32, 0)]), 0);
        }),
    ]);
    check_cases(cases, |check| check(&mut drv));
    assert!(
        drv.counters
            .errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );

    // Random requests: every opcode with random bodies and node ids.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let op = (next() % 52) as u32;
        if op == Opcode::Init as u32 || op == Opcode::Destroy as u32 {
            continue;
        }
        let nodeid = if next() % 2 == 0 { ROOT_ID } else { next() };
        let len = (next() % 200) as usize;
        let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let req = drv.request(op, nodeid, &body);
        let _ = drv.raw(&req, (next() % 512) as u32);
    }
    // Still serving.
    let hello = drv.lookup(ROOT_ID, "hello").unwrap();
    assert_eq!(
        drv.read_file(hello.nodeid).unwrap(),
        b"hello from the host\n"
    );
}

#[test]
fn an_idle_reset_is_prompt_and_a_new_activation_serves_again() {
    let (_d, share) = scratch();
    let mut drv = Driver::new(&share, FsCacheMode::Auto);
    let t = Instant::now();
    drv.fs.reset(&test_ctl());
    assert!(
        t.elapsed() < RESET_WAIT,
        "idle reset took {:?}",
        t.elapsed()
    );
    // Kicks after reset are ignored, not a crash.
    drv.fs.queue_notify(1, &test_ctl()).unwrap();
    drv.activate();
    let hello = drv.lookup(ROOT_ID, "hello").unwrap();
    assert_eq!(
        drv.read_file(hello.nodeid).unwrap(),
        b"hello from the host\n"
    );
}

fn requests(drv: &Driver) -> u64 {
    drv.counters
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)
}

const F_SETLEASE: libc::c_int = 1024;

/// Takes a read lease on `path`: an open for writing then blocks (up to the kernel's
/// lease-break-time, 45 s) until the lease is given up through the returned file.
fn read_lease(path: &Path) -> std::fs::File {
    let f = std::fs::File::open(path).unwrap();
    // The lease break is announced with SIGIO, whose default action is to terminate.
    // SAFETY: ignoring a signal; this runs in a child process of its own.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    // SAFETY: fcntl on our own fd with integer arguments.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), F_SETLEASE, libc::F_RDLCK) };
    assert_eq!(rc, 0, "F_SETLEASE: {}", std::io::Error::last_os_error());
    f
}

fn give_up_lease(f: &std::fs::File) {
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::fcntl(f.as_raw_fd(), F_SETLEASE, libc::F_UNLCK) },
        0
    );
}

#[test]
fn a_reset_while_a_request_blocks_returns_in_bounded_time() {
    let (outcome, stderr) = in_child(
        "devices::virtio::fs::tests::a_reset_while_a_request_blocks_returns_in_bounded_time",
        reset_while_a_request_blocks,
    );
    assert_eq!(outcome, Outcome::Exited(0), "stderr:\n{stderr}");
}

fn reset_while_a_request_blocks() {
    let (_d, share) = scratch();
    let mut drv = Driver::new(&share, FsCacheMode::None);
    let hello = drv.lookup(ROOT_ID, "hello").unwrap();
    let lease = read_lease(&share.join("hello"));

    // The worker's open for writing waits for the lease.
    let open = OpenIn {
        flags: libc::O_WRONLY as u32,
        fuse_flags: 0,
    };
    let req = drv.request(Opcode::Open as u32, hello.nodeid, open.as_slice());
    let chain = drv.request_chain(&req, REPLY_CAP);
    let (before, used_before) = (requests(&drv), drv.used_idx(1));
    drv.post(1, &chain);
    let deadline = Instant::now() + Duration::from_secs(10);
    while requests(&drv) == before {
        assert!(Instant::now() < deadline, "the worker never took the OPEN");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(drv.used_idx(1), used_before, "the OPEN is blocked");

    let t = Instant::now();
    drv.fs.reset(&test_ctl());
    let took = t.elapsed();
    assert!(
        took >= RESET_WAIT && took < RESET_WAIT + Duration::from_secs(1),
        "reset of a busy worker took {took:?}"
    );

    // The open goes through once the lease is gone; its reply is not published.
    give_up_lease(&lease);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        drv.used_idx(1),
        used_before,
        "the reply of a request cut by reset is not published"
    );
    // The next activation waits for that request and then serves.
    drv.activate();
    assert_eq!(
        drv.read_file(hello.nodeid).unwrap(),
        b"hello from the host\n"
    );
}

/// Every kind of request the guest's driver sends, each expected to succeed.
fn exercise_every_operation(drv: &mut Driver, share: &Path) {
    let hello = drv.lookup(ROOT_ID, "hello").unwrap();
    assert_eq!(
        drv.read_file(hello.nodeid).unwrap(),
        b"hello from the host\n"
    );
    let ok = |drv: &mut Driver, what: &str, op: Opcode, node: u64, payload: &[u8]| {
        let r = drv.call(op as u32, node, payload);
        assert_eq!(r.error, 0, "{what}");
        r.body
    };
    ok(drv, "getattr", Opcode::Getattr, hello.nodeid, &[0; 16]);
    ok(drv, "statfs", Opcode::Statfs, ROOT_ID, &[]);
    let access = AccessIn {
        mask: libc::R_OK as u32,
        padding: 0,
    };
    ok(
        drv,
        "access",
        Opcode::Access,
        hello.nodeid,
        access.as_slice(),
    );

    // Making and writing, as root and as a guest user (the worker switches ids).
    let dir = drv.mkdir(ROOT_ID, "d").unwrap();
    drv.create_file(dir.nodeid, "f", b"0123456789").unwrap();
    let f = drv.lookup(dir.nodeid, "f").unwrap();
    let fh = drv.open(f.nodeid, libc::O_RDWR).unwrap();
    let fsync = FsyncIn {
        fh,
        fsync_flags: 0,
        padding: 0,
    };
    ok(drv, "fsync", Opcode::Fsync, f.nodeid, fsync.as_slice());
    let fsync = FsyncIn {
        fh,
        fsync_flags: 1,
        padding: 0,
    };
    ok(drv, "fdatasync", Opcode::Fsync, f.nodeid, fsync.as_slice());
    let falloc = FallocateIn {
        fh,
        offset: 0,
        length: 4096,
        mode: 0,
        padding: 0,
    };
    ok(
        drv,
        "fallocate",
        Opcode::Fallocate,
        f.nodeid,
        falloc.as_slice(),
    );
    let lseek = LseekIn {
        fh,
        offset: 0,
        whence: libc::SEEK_DATA as u32,
        padding: 0,
    };
    ok(drv, "lseek", Opcode::Lseek, f.nodeid, lseek.as_slice());
    let flush = FlushIn {
        fh,
        unused: 0,
        padding: 0,
        lock_owner: 0,
    };
    ok(drv, "flush", Opcode::Flush, f.nodeid, flush.as_slice());
    drv.release(f.nodeid, fh);
    let setattr = SetattrIn {
        valid: (SetattrValid::MODE
            | SetattrValid::UID
            | SetattrValid::GID
            | SetattrValid::SIZE
            | SetattrValid::ATIME
            | SetattrValid::MTIME)
            .bits(),
        mode: 0o640,
        uid: 1234,
        gid: 1234,
        size: 3,
        atime: 1,
        mtime: 2,
        ..Default::default()
    };
    ok(
        drv,
        "setattr",
        Opcode::Setattr,
        f.nodeid,
        setattr.as_slice(),
    );
    let meta = std::fs::metadata(share.join("d/f")).unwrap();
    assert_eq!((meta.len(), meta.uid(), meta.mtime()), (3, 1234, 2));

    let mut mknod = MknodIn {
        mode: libc::S_IFIFO | 0o600,
        rdev: 0,
        umask: 0,
        padding: 0,
    }
    .as_slice()
    .to_vec();
    mknod.extend(cstr("pipe"));
    ok(drv, "mknod", Opcode::Mknod, dir.nodeid, &mknod);
    drv.symlink(dir.nodeid, "link", "f").unwrap();
    let link = drv.lookup(dir.nodeid, "link").unwrap();
    assert_eq!(
        ok(drv, "readlink", Opcode::Readlink, link.nodeid, &[]),
        b"f"
    );
    let mut hard = LinkIn {
        oldnodeid: f.nodeid,
    }
    .as_slice()
    .to_vec();
    hard.extend(cstr("hard"));
    ok(drv, "link", Opcode::Link, dir.nodeid, &hard);
    let mut rename = RenameIn { newdir: ROOT_ID }.as_slice().to_vec();
    rename.extend(cstr("hard"));
    rename.extend(cstr("moved"));
    ok(drv, "rename", Opcode::Rename, dir.nodeid, &rename);
    let mut rename2 = Rename2In {
        newdir: dir.nodeid,
        flags: libc::RENAME_NOREPLACE,
        padding: 0,
    }
    .as_slice()
    .to_vec();
    rename2.extend(cstr("moved"));
    rename2.extend(cstr("back"));
    ok(drv, "rename2", Opcode::Rename2, ROOT_ID, &rename2);

    // Extended attributes.
    let mut set = SetxattrIn { size: 1, flags: 0 }.as_slice().to_vec();
    set.extend(cstr("user.k"));
    set.extend(b"v");
    let r = drv.call(Opcode::Setxattr as u32, f.nodeid, &set);
    if r.error == 0 {
        let mut get = GetxattrIn {
            size: 64,
            padding: 0,
        }
        .as_slice()
        .to_vec();
        get.extend(cstr("user.k"));
        assert_eq!(ok(drv, "getxattr", Opcode::Getxattr, f.nodeid, &get), b"v");
        let list = GetxattrIn {
            size: 64,
            padding: 0,
        };
        ok(
            drv,
            "listxattr",
            Opcode::Listxattr,
            f.nodeid,
            list.as_slice(),
        );
        ok(
            drv,
            "removexattr",
            Opcode::Removexattr,
            f.nodeid,
            &cstr("user.k"),
        );
    }

    // Directory listings.
    let open = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let r = ok(drv, "opendir", Opcode::Opendir, dir.nodeid, open.as_slice());
    let dh = OpenOut::from_slice(&r[..std::mem::size_of::<OpenOut>()])
        .unwrap()
        .fh;
    let read = ReadIn {
        fh: dh,
        size: 4096,
        ..Default::default()
    };
    assert!(!ok(drv, "readdir", Opcode::Readdir, dir.nodeid, read.as_slice()).is_empty());
    ok(
        drv,
        "readdirplus",
        Opcode::Readdirplus,
        dir.nodeid,
        read.as_slice(),
    );
    let fsyncdir = FsyncIn {
        fh: dh,
        fsync_flags: 0,
        padding: 0,
    };
    ok(
        drv,
        "fsyncdir",
        Opcode::Fsyncdir,
        dir.nodeid,
        fsyncdir.as_slice(),
    );
    let release = ReleaseIn {
        fh: dh,
        ..Default::default()
    };
    ok(
        drv,
        "releasedir",
        Opcode::Releasedir,
        dir.nodeid,
        release.as_slice(),
    );

    // Made as a guest user: owned by that user on the host.
    drv.as_user = Some(1000);
    let theirs = drv.mkdir(ROOT_ID, "theirs").unwrap();
    drv.as_user = None;
    assert_eq!(theirs.attr.uid, 1000);
    assert_eq!(std::fs::metadata(share.join("theirs")).unwrap().uid(), 1000);

    // Removing.
    for name in ["back", "link", "pipe", "f"] {
        ok(drv, "unlink", Opcode::Unlink, dir.nodeid, &cstr(name));
    }
    ok(drv, "rmdir", Opcode::Rmdir, ROOT_ID, &cstr("d"));
    let forget = drv.request(
        Opcode::Forget as u32,
        dir.nodeid,
        ForgetIn { nlookup: 1 }.as_slice(),
    );
    drv.mem.write_slice(&forget, GuestAddress(REQ_BUF)).unwrap();
    drv.submit(0, &[(REQ_BUF, forget.len() as u32, 0)]);
}

#[test]
fn every_operation_works_without_a_filter() {
    let (_d, share) = scratch();
    let mut drv = Driver::new(&share, FsCacheMode::Auto);
    exercise_every_operation(&mut drv, &share);
}

#[test]
fn the_worker_serves_every_operation_under_its_seccomp_filter() {
    let (outcome, stderr) = in_child(
        "devices::virtio::fs::tests::the_worker_serves_every_operation_under_its_seccomp_filter",
        || {
            let filter = Arc::new(ThreadKind::FsWorker.compile().unwrap());
            let (_d, share) = scratch();
            let mut drv = Driver::with_filter(&share, FsCacheMode::Auto, Some(filter));
            exercise_every_operation(&mut drv, &share);
            // And a reset and a new activation, under the filter too.
            drv.fs.reset(&test_ctl());
            drv.activate();
            drv.lookup(ROOT_ID, "hello").unwrap();
        },
    );
    assert_eq!(outcome, Outcome::Exited(0), "stderr:\n{stderr}");
}

/// The kernel's INIT flags for 1 MiB requests (both live in the first 32 bits).
const LARGE_REQUESTS: u32 = (FsOptions::MAX_PAGES.bits() | FsOptions::BIG_WRITES.bits()) as u32;

#[test]
fn init_offers_1_mib_requests_to_a_kernel_that_takes_them() {
    let cases = [
        (
            "a kernel offering MAX_PAGES",
            (LARGE_REQUESTS, 1 << 20, 256),
        ),
        ("a kernel offering nothing", (0, 4096, 0)),
    ];
    check_cases(cases, |(offered, max_write, max_pages)| {
        let (_d, share) = scratch();
        let mut drv = Driver::unactivated(&share, FsCacheMode::Auto, None);
        drv.activate_queues();
        let out = drv.init_with(offered);
        assert_eq!((out.max_write, out.max_pages), (max_write, max_pages));
        assert_eq!(out.flags & !offered, 0, "only offered flags are enabled");
    });
}

#[test]
fn a_1_mib_write_and_read_are_one_request_each() {
    let (_d, share) = scratch();
    let mut drv = Driver::unactivated(&share, FsCacheMode::Auto, None);
    drv.activate_queues();
    drv.init_with(LARGE_REQUESTS);
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let (e, o) = drv.create(ROOT_ID, "big").unwrap();
    let fh = o.fh;
    let before = requests(&drv);
    assert_eq!(drv.write(e.nodeid, fh, 0, &data), Ok(1 << 20));
    assert_eq!(drv.read(e.nodeid, fh, 0, 1 << 20).as_deref(), Ok(&data[..]));
    assert_eq!(requests(&drv) - before, 2);
    drv.release(e.nodeid, fh);
    assert_eq!(std::fs::read(share.join("big")).unwrap(), data);
}

#[test]
fn requests_are_counted_by_opcode() {
    let (_d, share) = scratch();
    let mut drv = Driver::new(&share, FsCacheMode::Auto);
    drv.lookup(ROOT_ID, "hello").unwrap();
    drv.lookup(ROOT_ID, "missing").unwrap_err();
    let unassigned = drv.request(7, ROOT_ID, &[]);
    assert_eq!(
        drv.raw(&unassigned, REPLY_CAP).unwrap().error,
        -libc::ENOSYS
    );
    let ops = drv.counters.ops();
    let count = |op: &str| ops.get(op).map_or(0, |o| o.requests);
    assert_eq!(
        (count("INIT"), count("LOOKUP"), count("UNKNOWN")),
        (1, 2, 1),
        "{ops:?}"
    );
    let lookup = &ops["LOOKUP"];
    let header = std::mem::size_of::<InHeader>() as u64;
    assert_eq!(
        lookup.in_bytes,
        2 * header + 6 + 8,
        "two names with their NULs"
    );
    assert!(lookup.out_bytes > 0);
}

const IRQ_WAIT: Duration = Duration::from_secs(5);

/// The driver's `used_event` (after the avail ring) and the device's `avail_event` (after
/// the used ring), as EVENT_IDX places them.
fn used_event_addr(q: usize) -> u64 {
    avail_addr(q) + 4 + 2 * u64::from(QSIZE)
}
fn avail_event_addr(q: usize) -> u64 {
    used_addr(q) + 4 + 8 * u64::from(QSIZE)
}

#[test]
fn with_event_idx_the_device_interrupts_and_wants_kicks_only_as_the_rings_say() {
    let (_d, share) = scratch();
    let mut drv = Driver::unactivated(&share, FsCacheMode::Auto, None);
    assert_ne!(drv.fs.features() & VIRTIO_RING_F_EVENT_IDX, 0, "offered");
    drv.fs
        .ack_features(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    drv.activate_queues();
    let used_event = |drv: &Driver, v: u16| {
        drv.mem
            .write_obj(v, GuestAddress(used_event_addr(1)))
            .unwrap()
    };
    // "Interrupt me once the used index passes 0": the INIT's reply does.
    used_event(&drv, 0);
    drv.init();
    assert!(
        drv.interrupted_within(IRQ_WAIT),
        "used_event 0: the first reply interrupts"
    );
    // The device asks to be kicked for the next request, the avail index it waits at.
    let avail_event: u16 = drv.mem.read_obj(GuestAddress(avail_event_addr(1))).unwrap();
    assert_eq!(avail_event, 1);
    // A driver busy with its own work moves used_event ahead: no interrupt.
    used_event(&drv, 100);
    drv.lookup(ROOT_ID, "hello").unwrap();
    assert!(
        !drv.interrupted_within(Duration::from_millis(100)),
        "used_event 100: the second reply is silent"
    );
    used_event(&drv, drv.used_idx(1));
    drv.lookup(ROOT_ID, "hello").unwrap();
    assert!(
        drv.interrupted_within(IRQ_WAIT),
        "used_event caught up: the third reply interrupts"
    );
}

#[test]
fn without_event_idx_every_batch_interrupts() {
    let (_d, share) = scratch();
    let mut drv = Driver::new(&share, FsCacheMode::Auto);
    assert!(drv.interrupted_within(IRQ_WAIT), "INIT");
    for name in ["hello", "missing"] {
        let _ = drv.lookup(ROOT_ID, name);
        assert!(drv.interrupted_within(IRQ_WAIT), "{name}");
    }
}

#[test]
fn init_hands_set_id_clearing_to_the_device_and_opens_ask_for_no_flush() {
    let (_d, share) = scratch();
    let mut drv = Driver::unactivated(&share, FsCacheMode::Auto, None);
    drv.activate_queues();
    let killpriv = FsOptions::HANDLE_KILLPRIV_V2.bits() as u32;
    assert_eq!(drv.init_with(killpriv).flags & killpriv, killpriv);
    let hello = drv.lookup(ROOT_ID, "hello").unwrap();
    let p = OpenIn {
        flags: libc::O_RDONLY as u32,
        fuse_flags: 0,
    };
    let r = drv.call(Opcode::Open as u32, hello.nodeid, p.as_slice());
    let open = *OpenOut::from_slice(&r.body[..16]).unwrap();
    assert_ne!(open.open_flags & super::passthrough::NO_FLUSH, 0, "OPEN");
    drv.release(hello.nodeid, open.fh);
    let (_, create) = drv.create(ROOT_ID, "new").unwrap();
    assert_ne!(
        create.open_flags & super::passthrough::NO_FLUSH,
        0,
        "CREATE"
    );
}
