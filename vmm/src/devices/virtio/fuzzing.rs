//! Entry point for coverage-guided fuzzing (`vmm/fuzz`, cargo fuzz): arbitrary bytes
//! become a guest's view of a device's queues (descriptor tables, available rings and the
//! memory the descriptors point at), then the device is notified on every queue. The
//! property is the one the VMM promises: no input from the guest makes it panic.
//!
//! virtio-fs is driven one level up ([`fs`]): the input is a list of FUSE requests that
//! the harness lays out as well-formed chains, so the fuzzer spends its time in the FUSE
//! server rather than in ring parsing (which the other devices cover).
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::block::Block;
use super::device::{ActivateContext, Interrupt, VirtioDevice};
use super::net::Net;
use super::rng::Rng;
use super::vsock::Vsock;
use crate::config::BlockConfig;
use crate::event_loop::EventLoop;

/// Which device the input drives.
#[derive(Clone, Copy, Debug)]
pub enum FuzzDevice {
    Block,
    Fs,
    Net,
    Rng,
    Vsock,
}

const MEM_SIZE: usize = 1 << 20;
const QUEUE_SIZE: u16 = 16;
/// Per queue: descriptor table, then avail ring, then used ring, in one 4 KiB page.
const QUEUE_STRIDE: u64 = 0x1000;
const DESC_BYTES: usize = 16 * QUEUE_SIZE as usize;
const AVAIL_BYTES: usize = 4 + 2 * QUEUE_SIZE as usize + 2;
/// Where the rest of the input lands: the buffers descriptors are likely to point at.
const DATA_START: u64 = 0x1_0000;

const SCRATCH_PREFIX: &str = "hyper-vmm-fuzz-";
static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

/// A scratch directory kept for the whole fuzzing process (disk image, vsock socket, fs
/// shares), removed when the process exits normally. One that a crash or kill left behind
/// goes at the next process's start, once its pid is dead.
fn scratch() -> &'static PathBuf {
    SCRATCH.get_or_init(|| {
        let tmp = std::env::temp_dir();
        remove_stale_scratch(&tmp);
        let dir = tmp.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz scratch dir");
        // Rust never drops statics, and libFuzzer ends a run with exit(): atexit is the
        // hook both it and the test harness go through.
        // SAFETY: registers a plain function that takes nothing and returns nothing.
        unsafe { libc::atexit(remove_scratch) };
        let disk = std::fs::File::create(dir.join("disk.img")).expect("fuzz disk image");
        disk.set_len(64 * 1024).expect("size fuzz disk image");
        dir
    })
}

extern "C" fn remove_scratch() {
    if let Some(dir) = SCRATCH.get() {
        remove_tree(dir);
    }
}

/// Removes the scratch directories under `tmp` whose process is gone.
fn remove_stale_scratch(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|p| p.parse::<libc::pid_t>().ok());
        if let Some(pid) = pid
            && pid > 0
            && !process_alive(pid)
        {
            remove_tree(&entry.path());
        }
    }
}

/// Whether `pid` names a process (of any user: EPERM means it exists).
fn process_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Best-effort removal of a tree whose modes a fuzz input may have taken away (only
/// matters when not running as root).
fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return;
    }
    restore_dir_modes(dir);
    let _ = std::fs::remove_dir_all(dir);
}

fn restore_dir_modes(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            restore_dir_modes(&entry.path());
        }
    }
}

fn make_device(kind: FuzzDevice) -> Option<Box<dyn VirtioDevice>> {
    let counters = Arc::default();
    Some(match kind {
        FuzzDevice::Rng => Box::new(Rng::new(counters)),
        // Driven by fs::run, through FUSE requests.
        FuzzDevice::Fs => return None,
        FuzzDevice::Block => {
            let cfg = BlockConfig {
                path: scratch().join("disk.img"),
                read_only: false,
                serial: Some("fuzz".into()),
            };
            Box::new(Block::new("block0", &cfg, counters).ok()?)
        }
        FuzzDevice::Net => {
            let (ours, peer) = UnixDatagram::pair().ok()?;
            ours.set_nonblocking(true).ok()?;
            peer.set_nonblocking(true).ok()?;
            let _ = peer.send(&[0xab; 64]);
            // SAFETY: into_raw_fd hands the fd over; the File is its only owner. `peer`
            // is leaked so the tap stays connected for the whole run.
            let tap = unsafe { std::fs::File::from_raw_fd(ours.into_raw_fd()) };
            std::mem::forget(peer);
            Box::new(Net::with_tap(
                "net0",
                tap,
                Some([2, 0, 0, 0, 0, 1]),
                counters,
            ))
        }
        FuzzDevice::Vsock => {
            let uds = scratch().join("v.sock");
            let _ = std::fs::remove_file(&uds);
            Box::new(Vsock::new(3, &uds, counters).ok()?)
        }
    })
}

/// Runs one fuzz input against `kind`. Host-side set-up failures skip the input; a panic
/// anywhere below is a bug.
pub fn run(kind: FuzzDevice, data: &[u8]) {
    if let FuzzDevice::Fs = kind {
        fs::run(data);
        return;
    }
    let Some(mut dev) = make_device(kind) else {
        return;
    };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    let mut input = data;
    let mut take = |n: usize| {
        let (head, rest) = input.split_at(n.min(input.len()));
        input = rest;
        head
    };
    let nq = dev.queue_max_sizes().len();
    let mut queues = Vec::with_capacity(nq);
    for i in 0..nq as u64 {
        let base = i * QUEUE_STRIDE;
        let _ = mem.write_slice(take(DESC_BYTES), GuestAddress(base));
        let _ = mem.write_slice(take(AVAIL_BYTES), GuestAddress(base + 0x100));
        let Ok(mut q) = Queue::new(QUEUE_SIZE) else {
            return;
        };
        q.set_desc_table_address(Some(base as u32), Some(0));
        q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
        q.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
        q.set_ready(true);
        queues.push(q);
    }
    let rest = take(MEM_SIZE - DATA_START as usize);
    let _ = mem.write_slice(rest, GuestAddress(DATA_START));

    let (Ok(irq), Ok(event_loop)) = (EventFd::new(libc::EFD_NONBLOCK), EventLoop::new()) else {
        return;
    };
    let ctl = event_loop.next_ctl();
    let ctx = ActivateContext {
        mem,
        queues,
        interrupt: Interrupt::new(irq),
    };
    if dev.activate(ctx, &ctl).is_err() {
        return;
    }
    // Twice: the second pass sees what the first left in the rings.
    for _ in 0..2 {
        for q in 0..nq {
            let _ = dev.queue_notify(q, &ctl);
        }
    }
    let mut cfg = [0u8; 8];
    let off = data.first().copied().unwrap_or(0);
    dev.read_config(u64::from(off), &mut cfg);
}

/// virtio-fs: the device and its worker thread serve a fresh share for each input, which
/// is a list of FUSE requests laid out as descriptor chains on the hiprio and request
/// queues. The input's first byte picks the share's options; then each request is
///
/// | bytes | field |
/// |---|---|
/// | 1 | flags: the `F_*` bits below |
/// | 1 | opcode |
/// | 1 | node id (8 bytes with `F_WIDE_NODE`) |
/// | 1 | reply room: an index into `REPLY_ROOM` |
/// | 2 | body length, little endian (at most `MAX_BODY`) |
/// | 4 | header length, only with `F_LIE_LEN` (else the true length) |
/// | n | body (with `F_RAW`, the whole request: header included) |
///
/// A FUSE INIT on the request queue comes first, as from the guest driver. Node ids and
/// file handles are counters in a fresh server, and the share's names are one letter, so
/// the fuzzer finds them quickly.
pub mod fs {
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use fuse_backend_rs::abi::fuse_abi::{
        InHeader, InitIn, KERNEL_MINOR_VERSION, KERNEL_VERSION, Opcode, OutHeader,
    };
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    use vm_memory_017::ByteValued;
    use vmm_sys_util::eventfd::EventFd;

    use super::{remove_tree, scratch};
    use crate::config::{FsCacheMode, FsConfig};
    use crate::devices::virtio::device::{ActivateContext, Interrupt, VirtioDevice};
    use crate::devices::virtio::fs::{Fs, HIPRIO_QUEUE, REQUEST_QUEUE};
    use crate::event_loop::{EventCtl, EventLoop};

    /// On the hiprio queue instead of the request queue.
    const F_HIPRIO: u8 = 1 << 0;
    /// Two bits: the request in 1, 2 or 3 readable descriptors, or none at all (3).
    const F_PIECES_SHIFT: u8 = 1;
    /// The reply room in two writable descriptors.
    const F_SPLIT_REPLY: u8 = 1 << 3;
    /// The body is the whole request, header included.
    const F_RAW: u8 = 1 << 4;
    const F_LIE_LEN: u8 = 1 << 5;
    /// From uid/gid 1000 instead of root.
    const F_AS_USER: u8 = 1 << 6;
    const F_WIDE_NODE: u8 = 1 << 7;

    const QSIZE: u16 = 32;
    const MAX_REQUESTS: usize = 24;
    const MAX_BODY: usize = 4096;
    /// Reply room per request; the last one takes a 128 KiB READ.
    const REPLY_ROOM: [u32; 8] = [0, 15, 16, 80, 256, 4096, 32 << 10, (128 << 10) + 16];
    const MEM_SIZE: usize = 4 << 20;
    /// Queue q's rings are in page q: descriptors, then avail ring, then used ring.
    const AVAIL_OFF: u64 = 0x200;
    const USED_OFF: u64 = 0x400;
    /// Request and reply buffers from here on.
    const DATA_START: u64 = 0x1_0000;
    const HEADER_LEN: usize = std::mem::size_of::<InHeader>();
    const OUT_HEADER_LEN: usize = std::mem::size_of::<OutHeader>();
    /// How long every chain may take to come back before the input counts as a hang.
    const ANSWER_WAIT: Duration = Duration::from_secs(10);
    /// Largest file any input may grow on the host (`limit_file_size`), and the largest
    /// FALLOCATE it may ask for (the kernel skips RLIMIT_FSIZE for FALLOC_FL_KEEP_SIZE).
    const FILE_SIZE_MAX: u64 = 1 << 20;

    const VRING_DESC_F_NEXT: u16 = 1;
    const VRING_DESC_F_WRITE: u16 = 2;

    /// Caps every file this process writes at [`FILE_SIZE_MAX`] (too large a write fails
    /// with EFBIG instead of raising SIGXFSZ), so WRITE, SETATTR, COPY_FILE_RANGE and
    /// FALLOCATE cannot fill the host's disk. For the fuzz process only (a test binary's
    /// other tests write larger files), from the fuzz target's body: libFuzzer installs
    /// its own SIGXFSZ handler, which reports a crash, after its init hook.
    pub fn limit_file_size() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let lim = libc::rlimit {
                rlim_cur: FILE_SIZE_MAX,
                rlim_max: FILE_SIZE_MAX,
            };
            // SAFETY: plain syscalls on values we own.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            }
        });
    }

    /// What came back for one request, in the order they were posted.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Answer {
        pub queue: usize,
        /// The used length.
        pub len: u32,
        /// The reply header's error (0 or a negative errno), if a header came back.
        pub error: Option<i32>,
    }

    /// Runs one input; a panic (or a hang past [`ANSWER_WAIT`]) is a bug.
    pub fn run(data: &[u8]) -> Vec<Answer> {
        let mut input = Input(data);
        let options = input.u8();
        let share = Share::create(options);
        let mut guest = Guest::new();
        guest.post(&init_request());
        let mut unique = 1;
        while !input.is_empty() && guest.posted.len() < MAX_REQUESTS {
            unique += 1;
            if !guest.post(&ChainSpec::parse(&mut input, unique)) {
                break;
            }
        }
        let answers = share.serve(&mut guest);
        share.remove();
        answers
    }

    /// The share for one input: a directory with a file `a`, a directory `b` holding a
    /// file `c`, and a symlink `d` to `a`.
    struct Share {
        dir: PathBuf,
        cfg: FsConfig,
    }

    impl Share {
        fn create(options: u8) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = scratch().join(format!("share-{n}"));
            let seed = || -> std::io::Result<()> {
                std::fs::create_dir(&dir)?;
                std::fs::write(dir.join("a"), b"hello from the host\n")?;
                std::fs::create_dir(dir.join("b"))?;
                std::fs::write(dir.join("b/c"), [7u8; 300])?;
                std::os::unix::fs::symlink("a", dir.join("d"))
            };
            seed().expect("fuzz share");
            let cache = match options & 3 {
                0 => FsCacheMode::None,
                1 => FsCacheMode::Auto,
                _ => FsCacheMode::Always,
            };
            let cfg = FsConfig {
                tag: "fuzz".into(),
                shared_dir: dir.clone(),
                cache,
                writeback: options & 4 != 0,
                xattr: options & 8 == 0,
            };
            Share { dir, cfg }
        }

        /// A device and its worker over this share: activated on `guest`'s queues,
        /// notified, reset once every chain is back. The worker runs without its seccomp
        /// filter: libFuzzer reports a crash from the crashing thread, with syscalls
        /// (pipe2 for the symbolizer, getrusage) the filter kills, which would lose the
        /// crashing input.
        fn serve(&self, guest: &mut Guest) -> Vec<Answer> {
            let counters = Arc::default();
            let (mut dev, worker) = Fs::new("fs0", &self.cfg, counters).expect("fuzz fs device");
            let worker = worker.spawn(None).expect("fuzz fs worker");
            let irq = EventFd::new(libc::EFD_NONBLOCK).expect("irq eventfd");
            let ctx = ActivateContext {
                mem: guest.mem.clone(),
                queues: guest.queues(),
                interrupt: Interrupt::new(irq.try_clone().expect("irq eventfd")),
            };
            let ctl = ctl();
            dev.activate(ctx, ctl).expect("fuzz fs activation");
            for q in [HIPRIO_QUEUE, REQUEST_QUEUE] {
                dev.queue_notify(q, ctl).expect("fuzz fs notify");
            }
            guest.wait_for_answers(&irq, &worker);
            dev.reset(ctl);
            drop(dev);
            worker.join().expect("the fs worker panicked");
            guest.answers()
        }

        fn remove(self) {
            remove_tree(&self.dir);
        }
    }

    fn ctl() -> &'static EventCtl {
        static CTL: OnceLock<EventCtl> = OnceLock::new();
        CTL.get_or_init(|| EventLoop::new().expect("event loop").next_ctl())
    }

    /// One request chain before layout.
    struct ChainSpec {
        queue: usize,
        request: Vec<u8>,
        /// Readable descriptors the request is split into (0: none at all).
        pieces: usize,
        reply_room: u32,
        split_reply: bool,
    }

    impl ChainSpec {
        fn parse(input: &mut Input<'_>, unique: u64) -> Self {
            let flags = input.u8();
            let opcode = u32::from(input.u8());
            let nodeid = if flags & F_WIDE_NODE != 0 {
                u64::from_le_bytes(input.array())
            } else {
                u64::from(input.u8())
            };
            let reply_room = REPLY_ROOM[usize::from(input.u8()) % REPLY_ROOM.len()];
            let body_len = usize::from(u16::from_le_bytes(input.array())).min(MAX_BODY);
            let lie = (flags & F_LIE_LEN != 0).then(|| u32::from_le_bytes(input.array()));
            let body = input.bytes(body_len);
            let mut request = if flags & F_RAW != 0 {
                body.to_vec()
            } else {
                let id = if flags & F_AS_USER != 0 { 1000 } else { 0 };
                let header = InHeader {
                    len: lie.unwrap_or((HEADER_LEN + body.len()) as u32),
                    opcode,
                    unique,
                    nodeid,
                    uid: id,
                    gid: id,
                    pid: 1,
                    padding: 0,
                };
                [header.as_slice(), body].concat()
            };
            cap_fallocate(&mut request);
            let pieces = match (flags >> F_PIECES_SHIFT) & 3 {
                3 => 0,
                n => usize::from(n) + 1,
            };
            ChainSpec {
                queue: if flags & F_HIPRIO != 0 {
                    HIPRIO_QUEUE
                } else {
                    REQUEST_QUEUE
                },
                request,
                pieces,
                reply_room,
                split_reply: flags & F_SPLIT_REPLY != 0,
            }
        }

        /// (length, device-writable) of each descriptor, never none at all.
        fn descriptors(&self) -> Vec<(usize, bool)> {
            let mut descs = Vec::new();
            if self.pieces > 0 {
                let piece = self.request.len().div_ceil(self.pieces).max(1);
                let mut left = self.request.len();
                loop {
                    let n = left.min(piece);
                    descs.push((n, false));
                    left -= n;
                    if left == 0 {
                        break;
                    }
                }
            }
            let room = self.reply_room as usize;
            if self.split_reply {
                descs.extend([(room / 2, true), (room - room / 2, true)]);
            } else if room > 0 {
                descs.push((room, true));
            }
            if descs.is_empty() {
                descs.push((0, false));
            }
            descs
        }
    }

    /// What the guest driver sends first.
    fn init_request() -> ChainSpec {
        let init = InitIn {
            major: KERNEL_VERSION,
            minor: KERNEL_MINOR_VERSION,
            max_readahead: 128 << 10,
            flags: 0,
        };
        let header = InHeader {
            len: (HEADER_LEN + init.as_slice().len()) as u32,
            opcode: Opcode::Init as u32,
            unique: 1,
            ..Default::default()
        };
        ChainSpec {
            queue: REQUEST_QUEUE,
            request: [header.as_slice(), init.as_slice()].concat(),
            pieces: 1,
            reply_room: 4096,
            split_reply: false,
        }
    }

    /// Caps a FALLOCATE's length at [`FILE_SIZE_MAX`]: with FALLOC_FL_KEEP_SIZE the kernel
    /// allocates past the file size limit, and a terabyte would fill the host's disk.
    fn cap_fallocate(request: &mut [u8]) {
        const LENGTH: std::ops::Range<usize> = HEADER_LEN + 16..HEADER_LEN + 24;
        let opcode = request
            .get(4..8)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
        if opcode != Some(Opcode::Fallocate as u32) {
            return;
        }
        if let Some(field) = request.get_mut(LENGTH) {
            let length = u64::from_le_bytes((*field).try_into().unwrap());
            field.copy_from_slice(&length.min(FILE_SIZE_MAX).to_le_bytes());
        }
    }

    /// A chain on the rings: its queue, and where its reply header lands (if its first
    /// writable descriptor holds one).
    struct Posted {
        queue: usize,
        reply_at: Option<u64>,
    }

    /// Guest memory with the two queues' rings and the chains posted on them.
    struct Guest {
        mem: GuestMemoryMmap,
        next_data: u64,
        next_desc: [u16; 2],
        posted: Vec<Posted>,
    }

    fn ring(q: usize) -> u64 {
        q as u64 * 0x1000
    }

    impl Guest {
        fn new() -> Self {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
                .expect("fuzz guest memory");
            Guest {
                mem,
                next_data: DATA_START,
                next_desc: [0; 2],
                posted: Vec::new(),
            }
        }

        /// Lays out `spec` and makes it available; false when the queue or the memory is
        /// full (the input's remaining requests are dropped).
        fn post(&mut self, spec: &ChainSpec) -> bool {
            let q = spec.queue;
            let descs = spec.descriptors();
            let needed: u64 = descs.iter().map(|&(n, _)| (n as u64 + 7) & !7).sum();
            let first = self.next_desc[q];
            if usize::from(first) + descs.len() > usize::from(QSIZE)
                || self.next_data + needed > MEM_SIZE as u64
            {
                return false;
            }
            let mut request = spec.request.as_slice();
            let (mut reply_at, mut first_writable) = (None, true);
            for (i, &(len, writable)) in descs.iter().enumerate() {
                let addr = self.next_data;
                self.next_data += (len as u64 + 7) & !7;
                if writable {
                    if first_writable {
                        reply_at = (len >= OUT_HEADER_LEN).then_some(addr);
                        first_writable = false;
                    }
                } else {
                    let (piece, rest) = request.split_at(len.min(request.len()));
                    self.write(piece, addr);
                    request = rest;
                }
                let index = first + i as u16;
                let last = i + 1 == descs.len();
                let flags = if writable { VRING_DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { VRING_DESC_F_NEXT };
                let at = ring(q) + 16 * u64::from(index);
                self.write(&addr.to_le_bytes(), at);
                self.write(&(len as u32).to_le_bytes(), at + 8);
                self.write(&flags.to_le_bytes(), at + 12);
                self.write(&(index + 1).to_le_bytes(), at + 14);
            }
            self.next_desc[q] += descs.len() as u16;
            let slot = self.posted.iter().filter(|p| p.queue == q).count() as u16;
            self.write(
                &first.to_le_bytes(),
                ring(q) + AVAIL_OFF + 4 + 2 * u64::from(slot),
            );
            self.write(&(slot + 1).to_le_bytes(), ring(q) + AVAIL_OFF + 2);
            self.posted.push(Posted { queue: q, reply_at });
            true
        }

        fn write(&self, bytes: &[u8], at: u64) {
            self.mem
                .write_slice(bytes, GuestAddress(at))
                .expect("inside fuzz guest memory");
        }

        fn read<T: vm_memory::ByteValued>(&self, at: u64) -> T {
            self.mem
                .read_obj(GuestAddress(at))
                .expect("inside fuzz guest memory")
        }

        fn queues(&self) -> Vec<Queue> {
            (0..2)
                .map(|q| {
                    let mut queue = Queue::new(1024).expect("fuzz queue");
                    queue.set_size(QSIZE);
                    queue.set_desc_table_address(Some(ring(q) as u32), Some(0));
                    queue.set_avail_ring_address(Some((ring(q) + AVAIL_OFF) as u32), Some(0));
                    queue.set_used_ring_address(Some((ring(q) + USED_OFF) as u32), Some(0));
                    queue.set_ready(true);
                    queue
                })
                .collect()
        }

        fn used_idx(&self, q: usize) -> u16 {
            self.read(ring(q) + USED_OFF + 2)
        }

        fn all_answered(&self) -> bool {
            (0..2).all(|q| {
                usize::from(self.used_idx(q)) == self.posted.iter().filter(|p| p.queue == q).count()
            })
        }

        /// Waits on the device's interrupt until every chain is back; a worker that dies
        /// or takes longer than [`ANSWER_WAIT`] is a finding.
        fn wait_for_answers(&self, irq: &EventFd, worker: &JoinHandle<()>) {
            let deadline = Instant::now() + ANSWER_WAIT;
            while !self.all_answered() {
                assert!(!worker.is_finished(), "the fs worker thread ended");
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(
                    !left.is_zero(),
                    "the fs worker left chains unanswered for {ANSWER_WAIT:?}"
                );
                // Bounded so a worker that dies without an interrupt is seen.
                let ms = left.min(Duration::from_millis(100)).as_millis() as i32;
                let mut pfd = libc::pollfd {
                    fd: irq.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, ms) };
                let _ = irq.read();
            }
        }

        /// The used ring in posting order (each queue returns its chains in order: one
        /// worker serves them one by one).
        fn answers(&self) -> Vec<Answer> {
            let mut seen = [0u64; 2];
            self.posted
                .iter()
                .map(|p| {
                    let elem = ring(p.queue) + USED_OFF + 4 + 8 * seen[p.queue];
                    seen[p.queue] += 1;
                    let len: u32 = self.read(elem + 4);
                    let error = p
                        .reply_at
                        .filter(|_| len as usize >= OUT_HEADER_LEN)
                        .map(|at| self.read::<i32>(at + 4));
                    Answer {
                        queue: p.queue,
                        len,
                        error,
                    }
                })
                .collect()
        }
    }

    /// The input, consumed front to back; reads past its end give zeros.
    struct Input<'a>(&'a [u8]);

    impl<'a> Input<'a> {
        fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
        fn bytes(&mut self, n: usize) -> &'a [u8] {
            let (head, rest) = self.0.split_at(n.min(self.0.len()));
            self.0 = rest;
            head
        }
        fn array<const N: usize>(&mut self) -> [u8; N] {
            let mut out = [0u8; N];
            let head = self.bytes(N);
            out[..head.len()].copy_from_slice(head);
            out
        }
        fn u8(&mut self) -> u8 {
            self.array::<1>()[0]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::check_cases;

    /// The entry point itself runs every device on plain and degenerate inputs (the
    /// fuzzer explores from there).
    #[test]
    fn every_device_takes_any_input() {
        let inputs: [(&str, &[u8]); 4] = [
            ("no bytes", &[]),
            ("64 zero bytes", &[0; 64]),
            ("4096 0xff bytes", &[0xff; 4096]),
            ("70000 bytes of 7", &[7; 70_000]),
        ];
        let kinds = [
            FuzzDevice::Block,
            FuzzDevice::Fs,
            FuzzDevice::Net,
            FuzzDevice::Rng,
            FuzzDevice::Vsock,
        ];
        let cases = kinds.into_iter().flat_map(|kind| {
            inputs.map(|(what, data)| (format!("{kind:?}, {what}"), (kind, data)))
        });
        check_cases(cases, |(kind, data)| run(kind, data));
    }

    /// One request in the fs input format: flags, opcode, node id, reply room, body.
    fn fs_request(flags: u8, opcode: u32, nodeid: u8, room: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![flags, opcode as u8, nodeid, room];
        r.extend((body.len() as u16).to_le_bytes());
        r.extend(body);
        r
    }

    /// The fs harness reaches the FUSE server: real requests against the seeded share
    /// get the answers a driver would see, in a fresh server each run (node ids and file
    /// handles start over).
    #[test]
    fn fs_requests_reach_the_server_and_each_run_starts_afresh() {
        use fuse_backend_rs::abi::fuse_abi::{Opcode, OpenIn, ReadIn};
        use vm_memory_017::ByteValued;

        const ROOM_4K: u8 = 5;
        const ROOT: u8 = 1;
        let ok = |len| fs::Answer {
            queue: 1,
            len,
            error: Some(0),
        };
        let failed = |errno: i32| fs::Answer {
            queue: 1,
            len: 16,
            error: Some(-errno),
        };
        // b is node 2, b/c node 3, its first handle 1.
        let read_c = [
            fs_request(0, Opcode::Lookup as u32, ROOT, ROOM_4K, b"b\0"),
            fs_request(0, Opcode::Lookup as u32, 2, ROOM_4K, b"c\0"),
            fs_request(
                0,
                Opcode::Open as u32,
                3,
                ROOM_4K,
                OpenIn::default().as_slice(),
            ),
            fs_request(
                0,
                Opcode::Read as u32,
                3,
                ROOM_4K,
                ReadIn {
                    fh: 1,
                    size: 1000,
                    ..Default::default()
                }
                .as_slice(),
            ),
        ]
        .concat();
        let forget = fs_request(1, Opcode::Forget as u32, 2, 0, &5u64.to_le_bytes());
        let mut lying = fs_request(1 << 5, Opcode::Lookup as u32, ROOT, ROOM_4K, b"a\0");
        lying.splice(6..6, u32::MAX.to_le_bytes());
        let cases: Vec<(&str, Vec<u8>, Vec<fs::Answer>)> = vec![
            (
                "a lookup of a",
                fs_request(0, Opcode::Lookup as u32, ROOT, ROOM_4K, b"a\0"),
                vec![ok(16 + 128)],
            ),
            (
                "a lookup of a missing name",
                fs_request(0, Opcode::Lookup as u32, ROOT, ROOM_4K, b"zz\0"),
                vec![failed(libc::ENOENT)],
            ),
            (
                "an unassigned opcode",
                fs_request(0, 7, ROOT, ROOM_4K, &[]),
                vec![failed(libc::ENOSYS)],
            ),
            ("a header claiming 4 GiB", lying, vec![failed(libc::ENOMEM)]),
            (
                "a FORGET on the hiprio queue",
                forget,
                vec![fs::Answer {
                    queue: 0,
                    len: 0,
                    error: None,
                }],
            ),
            (
                "b/c read through a handle",
                read_c,
                vec![ok(16 + 128), ok(16 + 128), ok(16 + 16), ok(16 + 300)],
            ),
        ];
        check_cases(
            cases
                .into_iter()
                .map(|(name, req, want)| (name, (req, want))),
            |(req, want)| {
                // Twice: the second run sees the same fresh share and server.
                for _ in 0..2 {
                    let answers = fs::run(&[[1u8].as_slice(), &req].concat());
                    assert_eq!(answers[0], ok(answers[0].len), "INIT first");
                    assert_eq!(answers[1..], want);
                }
            },
        );
    }

    /// The scratch directory goes with the process that made it (which exits normally).
    #[test]
    fn the_scratch_dir_goes_when_its_process_exits() {
        let (outcome, stderr) = crate::seccomp::child::in_child(
            "devices::virtio::fuzzing::tests::the_scratch_dir_goes_when_its_process_exits",
            || {
                run(FuzzDevice::Fs, &[1]);
                eprintln!("scratch={}", scratch().display());
            },
        );
        assert_eq!(
            outcome,
            crate::seccomp::child::Outcome::Exited(0),
            "{stderr}"
        );
        let dir = stderr
            .lines()
            .find_map(|l| l.strip_prefix("scratch="))
            .unwrap_or_else(|| panic!("no scratch path in {stderr}"));
        assert!(dir.contains(SCRATCH_PREFIX), "{dir}");
        assert!(!Path::new(dir).exists(), "{dir} is still there");
    }

    /// A scratch directory whose process is gone is removed; a live process's is kept.
    #[test]
    fn stale_scratch_dirs_go_and_live_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        dead.wait().unwrap();
        let mut live = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let dir = |pid: u32| tmp.path().join(format!("{SCRATCH_PREFIX}{pid}"));
        for pid in [dead.id(), live.id()] {
            std::fs::create_dir(dir(pid)).unwrap();
            std::fs::write(dir(pid).join("disk.img"), b"x").unwrap();
        }
        let other = tmp.path().join("hyper-vmm-fuzz-notapid");
        std::fs::create_dir(&other).unwrap();

        remove_stale_scratch(tmp.path());
        let (dead_gone, live_kept) = (!dir(dead.id()).exists(), dir(live.id()).exists());
        live.kill().unwrap();
        live.wait().unwrap();
        assert!(dead_gone, "the dead process's dir is still there");
        assert!(live_kept, "the live process's dir was removed");
        assert!(other.exists(), "a dir without a pid was removed");
    }
}
