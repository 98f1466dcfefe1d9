//! The thread that answers the guest's FUSE requests, so a slow host file system never
//! stalls the event loop (vsock, block, net and the control socket live there). It waits
//! on the queues' notification eventfds itself (KVM signals them on the guest's
//! QueueNotify write), so a request reaches it without passing through the event loop,
//! and it keeps the guest's kicks off while it drains a queue. A reset stops it between
//! requests.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;

use fuse_backend_rs::abi::fuse_abi::{GetxattrIn, InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue_017::{Queue, QueueT};
use vm_memory_017::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use super::memory_view::MemoryView;
use super::passthrough::Passthrough;
use crate::devices::virtio::Interrupt;
use crate::metrics::{DeviceCounters, add, inc};
use crate::seccomp::{BpfProgram, spawn_filtered};

/// FUSE opcodes below the highest one that name no operation.
const UNASSIGNED_OPCODES: [u32; 2] = [7, 19];
/// GETXATTR and LISTXATTR: fuse-backend-rs allocates the reply buffer the guest asks for
/// (`Vec::with_capacity(size)`) before anything else, so a guest could ask for 4 GiB.
const XATTR_SIZE_OPCODES: [u32; 2] = [22, 23];
/// The kernel's own limit on an xattr value or list (XATTR_SIZE_MAX): no real guest
/// driver asks for more.
const XATTR_SIZE_MAX: u32 = 1 << 16;
/// FORGET and BATCH_FORGET: the driver expects no reply.
const NO_REPLY_OPCODES: [u32; 2] = [2, 42];

pub type FsServer = Server<Arc<Passthrough>>;

/// Turns a queue the transport configured (0.18) into the same queue in 0.17 types.
pub fn queue_017(q: &virtio_queue::Queue) -> Result<Queue, String> {
    use virtio_queue::QueueT as _;
    let mut n = Queue::new(q.max_size()).map_err(|e| e.to_string())?;
    n.set_size(q.size());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(q.desc_table());
    n.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    n.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    n.set_used_ring_address(lo, hi);
    n.set_ready(q.ready());
    Ok(n)
}

/// One activation's state: the queues the driver set up, until reset says stop.
pub struct Session {
    pub view: MemoryView,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<Interrupt>,
    pub stop: Arc<AtomicBool>,
    /// Dropped when the worker is done with the session: the resetter waits on its peer.
    pub done: mpsc::Sender<()>,
}

/// The worker thread: created before the guest runs (so it gets its own seccomp filter,
/// not a vCPU's), parked until an activation hands it a [`Session`], back to parked
/// when the session stops. Ends when the device is dropped.
pub struct FsWorker {
    pub name: String,
    pub server: Arc<FsServer>,
    /// Written by a reset: look at the session's stop flag.
    pub kick: Arc<EventFd>,
    /// One per queue: the guest's notifications.
    pub notify: Vec<Arc<EventFd>>,
    pub sessions: mpsc::Receiver<Session>,
    pub counters: Arc<DeviceCounters>,
}

impl FsWorker {
    /// Starts the thread, under `filter` if given (installed before it serves anything).
    pub fn spawn(self, filter: Option<Arc<BpfProgram>>) -> std::io::Result<JoinHandle<()>> {
        let builder = std::thread::Builder::new().name(format!("hyper-{}", self.name));
        spawn_filtered(builder, filter, move || self.run())
    }

    fn run(self) {
        while let Ok(session) = self.sessions.recv() {
            self.serve(session);
        }
    }

    /// Drains every queue, then waits for a notification or a stop, until the session is
    /// stopped or a queue breaks (then the device stays silent until the guest resets it).
    /// The first pass answers what a restored guest posted before its snapshot.
    fn serve(&self, mut s: Session) {
        // What `wait` polls, built once: the reset kick, then each queue's notifications.
        let evts: Vec<&EventFd> = std::iter::once(self.kick.as_ref())
            .chain(self.notify.iter().map(|e| e.as_ref()))
            .collect();
        let mut fds: Vec<libc::pollfd> = evts
            .iter()
            .map(|e| libc::pollfd {
                fd: e.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        loop {
            for i in 0..s.queues.len() {
                if let Err(e) = self.process_queue(&mut s, i) {
                    tracing::error!("{}: queue {i} is broken, device stopped: {e}", self.name);
                    return;
                }
            }
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            if let Err(e) = self.wait(&evts, &mut fds) {
                tracing::error!("{}: waiting for the guest: {e}", self.name);
                return;
            }
        }
    }

    /// Blocks until a reset's kick or a queue notification (`evts`, polled as `fds`), and
    /// drains what fired.
    fn wait(&self, evts: &[&EventFd], fds: &mut [libc::pollfd]) -> std::io::Result<()> {
        // SAFETY: `fds` is an array of `fds.len()` pollfds that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::Interrupted => Ok(()),
                _ => Err(e),
            };
        }
        for (i, (fd, evt)) in fds.iter().zip(evts).enumerate() {
            if fd.revents & libc::POLLIN == 0 {
                continue;
            }
            match evt.read() {
                // Each QueueNotify write adds one: the count is the guest's kicks.
                Ok(kicks) if i > 0 => add(&self.counters.notifications, kicks),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Answers what is on queue `index`, checking for a stop before each request: a guest
    /// that keeps the queue full cannot keep a reset waiting. While it drains, the guest is
    /// told not to kick (with EVENT_IDX, by the avail event): it only adds to the ring.
    fn process_queue(&self, s: &mut Session, index: usize) -> Result<(), virtio_queue_017::Error> {
        let mem = &s.view.mem;
        let queue = &mut s.queues[index];
        let mut used = false;
        loop {
            queue.disable_notification(mem)?;
            while !s.stop.load(Ordering::Acquire) {
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                inc(&self.counters.requests);
                let len = handle(&self.server, mem, chain, &self.counters, &self.name);
                // Reset while this request ran (the resetter stopped waiting): the queue
                // is the guest's again, so the reply is dropped instead of published.
                if s.stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                queue.add_used(mem, head, len)?;
                used = true;
            }
            if s.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            // Kicks back on; what the guest added since the last pop is served now, as no
            // kick will announce it.
            if !queue.enable_notification(mem)? {
                break;
            }
        }
        if used && queue.needs_notification(mem)? {
            inc(&self.counters.interrupts);
            s.interrupt.signal_used_queue();
        }
        Ok(())
    }
}

/// Answers one request; returns how many bytes of reply went into the chain. A request the
/// server cannot even decode gets no reply (length 0) and counts as an error.
fn handle(
    server: &FsServer,
    mem: &vm_memory_017::GuestMemoryMmap,
    chain: virtio_queue_017::DescriptorChain<&vm_memory_017::GuestMemoryMmap>,
    counters: &DeviceCounters,
    name: &str,
) -> u32 {
    let reader = Reader::from_descriptor_chain(mem, chain.clone());
    let writer = VirtioFsWriter::new(mem, chain);
    let (reader, writer) = match (reader, writer) {
        (Ok(r), Ok(w)) => (r, w),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!("{name}: bad descriptor chain: {e}");
            inc(&counters.errors);
            return 0;
        }
    };
    let in_bytes = reader.available_bytes() as u64;
    add(&counters.tx_bytes, in_bytes);
    let header = reader.clone().read_obj::<InHeader>().ok();
    let op = header.map_or("UNDECODABLE", |h| opcode_name(h.opcode));
    let started = Instant::now();
    let len = answer(server, reader, writer, header, counters, name);
    counters.record_op(op, in_bytes, u64::from(len), started.elapsed());
    len
}

/// What [`handle`] replies once the chain is known to be readable and writable.
fn answer(
    server: &FsServer,
    reader: Reader<'_>,
    writer: VirtioFsWriter<'_>,
    header: Option<InHeader>,
    counters: &DeviceCounters,
    name: &str,
) -> u32 {
    // For an error reply of our own, should the server give up on the request.
    let mut spare: Writer<'_> = writer.clone().into();
    if let Some(h) = header
        && let Some(errno) = refused(&reader, &h)
    {
        inc(&counters.errors);
        return reply_error(&mut spare, h.unique, errno);
    }
    match server.handle_message(reader, writer.into(), None, None) {
        Ok(n) => {
            add(&counters.rx_bytes, n as u64);
            u32::try_from(n).unwrap_or(u32::MAX)
        }
        Err(e) => {
            tracing::debug!("{name}: request rejected: {e}");
            inc(&counters.errors);
            // A request the server could not decode still gets an answer, so the guest
            // driver sees an error instead of waiting; FORGETs never get one.
            match header {
                Some(h) if !NO_REPLY_OPCODES.contains(&h.opcode) => {
                    reply_error(&mut spare, h.unique, libc::EINVAL)
                }
                _ => 0,
            }
        }
    }
}

/// A FUSE opcode's name as the metrics report it ("LOOKUP", "WRITE", …); the guest picks
/// the number, so anything unassigned is "UNKNOWN" rather than a name of its own.
fn opcode_name(op: u32) -> &'static str {
    static NAMES: LazyLock<Vec<String>> = LazyLock::new(|| {
        (0..Opcode::MaxOpcode as u32)
            .map(|op| match op {
                // Opcode::from transmutes, which is only defined for assigned opcodes.
                0 => String::new(),
                op if UNASSIGNED_OPCODES.contains(&op) => String::new(),
                op => format!("{:?}", Opcode::from(op)).to_uppercase(),
            })
            .collect()
    });
    match NAMES.get(op as usize) {
        Some(n) if !n.is_empty() => n,
        _ => "UNKNOWN",
    }
}

/// The error for a request that must not reach fuse-backend-rs, if this is one.
fn refused(reader: &Reader<'_>, h: &InHeader) -> Option<i32> {
    if UNASSIGNED_OPCODES.contains(&h.opcode) {
        // fuse-backend-rs turns opcodes into its enum by transmute (in its trace logs),
        // which is undefined for these holes; they never reach it.
        return Some(libc::ENOSYS);
    }
    if XATTR_SIZE_OPCODES.contains(&h.opcode) {
        let mut body = reader.clone();
        body.read_obj::<InHeader>().ok()?;
        let size = body.read_obj::<GetxattrIn>().ok()?.size;
        return (size > XATTR_SIZE_MAX).then_some(libc::E2BIG);
    }
    None
}

/// Writes a bare error reply; returns its length (0 if the chain has no room for it).
fn reply_error(writer: &mut Writer<'_>, unique: u64, errno: i32) -> u32 {
    use std::io::Write;
    let out = OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    };
    match writer.write_all(out.as_slice()) {
        Ok(()) => out.len,
        Err(_) => 0,
    }
}
