//! Multiplexes guest vsock streams onto host unix sockets (Firecracker's "hybrid vsock").
//!
//! - Host → guest: a client connects to `<uds>`, writes `CONNECT <port>\n`; we send the
//!   guest a REQUEST, and on its RESPONSE write `OK <hostport>\n` back. If the guest
//!   refuses (RST) the client's socket is closed.
//! - Guest → host: a guest connect to (CID 2, port P) becomes a connect to `<uds>_<P>`.
//!
//! The muxer owns the listener, handshakes in progress and connections, and keeps a queue
//! of connections (and stray RSTs) that owe the guest a packet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use crate::devices::virtio::device::DEVICE_SUB_BASE;
use crate::devices::virtio::vsock::csm::{ConnState, Connection};
use crate::devices::virtio::vsock::packet::{
    HOST_CID, Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use crate::event_loop::EventCtl;
use crate::metrics::{DeviceCounters, add, inc};

/// Longest CONNECT line we wait for ("CONNECT 4294967295\n" is 19 bytes).
pub const MAX_CONNECT_LINE: usize = 32;
/// Most connections at once; more are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Stray RSTs we queue for the guest; beyond that they are dropped (the guest times out).
const MAX_QUEUED_RSTS: usize = 256;
/// Host-side ports for host-initiated connections start here (as in Firecracker).
const LOCAL_PORT_FIRST: u32 = 1 << 30;
const LISTENER_SUB: u32 = DEVICE_SUB_BASE;
/// Sub-tokens above this belong to the device (its timer), not to host streams.
pub const LAST_STREAM_SUB: u32 = u32::MAX - 16;
/// A host client must send its CONNECT line within this time...
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// ...and the guest must answer the REQUEST within this time, or the client is closed
/// (and the guest told RST).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Key = (u32, u32); // (host port, guest port)

enum RxItem {
    Conn(Key),
    Rst(Header),
}

struct Handshake {
    stream: UnixStream,
    buf: Vec<u8>,
    since: Instant,
}

struct Entry {
    conn: Connection,
    sub: u32,
    in_rxq: bool,
    interest: EventSet,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listening: bool,
    handshakes: HashMap<u32, Handshake>,
    conns: HashMap<Key, Entry>,
    subs: HashMap<u32, Key>,
    rxq: VecDeque<RxItem>,
    next_sub: u32,
    next_local_port: u32,
    local_ports: HashSet<u32>,
    counters: Arc<DeviceCounters>,
}

impl Muxer {
    /// Binds `uds_path` (a stale socket file is replaced), mode 0600: only our user may
    /// connect to the guest.
    pub fn new(guest_cid: u64, uds_path: &Path, counters: Arc<DeviceCounters>) -> io::Result<Self> {
        if std::fs::symlink_metadata(uds_path).is_ok() {
            std::fs::remove_file(uds_path)?;
        }
        let listener = crate::private_socket::bind_private(uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            listening: false,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            subs: HashMap::new(),
            rxq: VecDeque::new(),
            next_sub: LISTENER_SUB + 1,
            next_local_port: LOCAL_PORT_FIRST,
            local_ports: HashSet::new(),
            counters,
        })
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Starts accepting host connections (on device activation).
    pub fn activate(&mut self, ctl: &EventCtl) -> io::Result<()> {
        if !self.listening {
            ctl.add(self.listener.as_raw_fd(), EventSet::IN, LISTENER_SUB)?;
            self.listening = true;
        }
        // Clients that connected before the guest was ready are waiting in the backlog.
        self.accept(ctl);
        Ok(())
    }

    /// Drops every connection and handshake (device reset).
    pub fn reset(&mut self, ctl: &EventCtl) {
        for (_, h) in self.handshakes.drain() {
            ctl.remove(h.stream.as_raw_fd());
        }
        for (_, e) in self.conns.drain() {
            ctl.remove(e.conn.stream.as_raw_fd());
        }
        self.count_connections();
        self.subs.clear();
        self.rxq.clear();
        self.local_ports.clear();
        if self.listening {
            ctl.remove(self.listener.as_raw_fd());
            self.listening = false;
        }
    }

    /// Closes handshakes and host-initiated connections that waited too long. Called
    /// periodically by the device.
    pub fn sweep(&mut self, now: Instant, ctl: &EventCtl) {
        let stale: Vec<u32> = self
            .handshakes
            .iter()
            .filter(|(_, h)| now.duration_since(h.since) > HANDSHAKE_TIMEOUT)
            .map(|(&sub, _)| sub)
            .collect();
        for sub in stale {
            if let Some(h) = self.handshakes.remove(&sub) {
                ctl.remove(h.stream.as_raw_fd());
                tracing::debug!("vsock: host client sent no CONNECT line in time");
                inc(&self.counters.errors);
            }
        }
        let stale: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, e)| {
                e.conn.state == ConnState::LocalInit
                    && now.duration_since(e.conn.since) > CONNECT_TIMEOUT
            })
            .map(|(&k, _)| k)
            .collect();
        for key in stale {
            tracing::debug!("vsock: guest did not answer CONNECT {} in time", key.1);
            if let Some(e) = self.conns.get_mut(&key) {
                e.conn.mark_rst();
            }
            self.refresh(key, ctl);
        }
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The open connections, for error messages: "host port H - guest port G (State)".
    pub fn describe_connections(&self) -> Vec<String> {
        let mut described: Vec<_> = self
            .conns
            .iter()
            .map(|(&(host, guest), e)| {
                format!("host port {host} - guest port {guest} ({:?})", e.conn.state)
            })
            .collect();
        described.sort();
        described
    }

    pub fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    fn alloc_sub(&mut self) -> u32 {
        loop {
            let s = self.next_sub;
            self.next_sub = if self.next_sub >= LAST_STREAM_SUB {
                LISTENER_SUB + 1
            } else {
                self.next_sub + 1
            };
            if !self.subs.contains_key(&s) && !self.handshakes.contains_key(&s) {
                return s;
            }
        }
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(LOCAL_PORT_FIRST);
            if !self.local_ports.contains(&p) {
                self.local_ports.insert(p);
                return p;
            }
        }
    }

    fn queue_rst_reply(&mut self, to: &Header) {
        if self.rxq.len() >= MAX_QUEUED_RSTS + self.conns.len() {
            return;
        }
        self.rxq.push_back(RxItem::Rst(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        }));
    }

    /// Re-queues the connection if it owes the guest something, updates its epoll interest,
    /// and drops it once it is closed and has nothing left to say.
    fn refresh(&mut self, key: Key, ctl: &EventCtl) {
        let Some(e) = self.conns.get_mut(&key) else {
            return;
        };
        if e.conn.has_pending() && !e.in_rxq {
            e.in_rxq = true;
            self.rxq.push_back(RxItem::Conn(key));
        }
        if e.conn.state == ConnState::Closing && !e.conn.has_pending() {
            self.remove(key, ctl);
            return;
        }
        let mut want = EventSet::empty();
        if e.conn.state == ConnState::LocalInit {
            // Nothing to read yet, but notice a client that hangs up.
            want |= EventSet::HANG_UP;
        }
        if e.conn.wants_read() {
            want |= EventSet::IN;
        }
        if e.conn.wants_write() {
            want |= EventSet::OUT;
        }
        if want != e.interest {
            let fd = e.conn.stream.as_raw_fd();
            let r = if e.interest.is_empty() {
                ctl.add(fd, want, e.sub)
            } else if want.is_empty() {
                ctl.remove(fd);
                Ok(())
            } else {
                ctl.modify(fd, want, e.sub)
            };
            if let Err(err) = r {
                crate::rate_limited_warn!("vsock: cannot watch host stream: {err}");
            }
            e.interest = want;
        }
    }

    fn remove(&mut self, key: Key, ctl: &EventCtl) {
        if let Some(e) = self.conns.remove(&key) {
            if !e.interest.is_empty() {
                ctl.remove(e.conn.stream.as_raw_fd());
            }
            self.subs.remove(&e.sub);
            self.local_ports.remove(&key.0);
            tracing::debug!("vsock: connection {key:?} closed");
        }
        self.count_connections();
    }

    /// Publishes how many connections are open (the `connections` gauge).
    fn count_connections(&self) {
        let open = self.conns.len() as u64;
        self.counters.connections.store(open, Ordering::Relaxed);
    }

    fn insert(&mut self, conn: Connection, ctl: &EventCtl) {
        let key = (conn.local_port, conn.peer_port);
        let sub = self.alloc_sub();
        self.subs.insert(sub, key);
        self.conns.insert(
            key,
            Entry {
                conn,
                sub,
                in_rxq: false,
                interest: EventSet::empty(),
            },
        );
        inc(&self.counters.connections_opened);
        self.count_connections();
        self.refresh(key, ctl);
    }

    /// A packet from the guest.
    pub fn send_pkt(&mut self, hdr: &Header, data: &[u8], ctl: &EventCtl) {
        inc(&self.counters.requests);
        if hdr.type_ != TYPE_STREAM {
            inc(&self.counters.errors);
            self.queue_rst_reply(hdr);
            return;
        }
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            crate::rate_limited_debug!(
                "vsock: dropping packet {} -> {} (guest cid {})",
                hdr.src_cid,
                hdr.dst_cid,
                self.guest_cid
            );
            inc(&self.counters.errors);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let Some(e) = self.conns.get_mut(&key) else {
            match hdr.op {
                OP_REQUEST => self.guest_connect(hdr, ctl),
                OP_RST => {}
                _ => self.queue_rst_reply(hdr),
            }
            return;
        };
        let c = &mut e.conn;
        c.update_peer_credit(hdr);
        let mut remove_now = false;
        match (c.state, hdr.op) {
            (ConnState::LocalInit, OP_RESPONSE) => {
                c.established();
                let ok = format!("OK {}\n", c.local_port);
                if write_all_nonblocking(&mut c.stream, ok.as_bytes()).is_err() {
                    c.mark_rst();
                }
            }
            (_, OP_RST) => remove_now = true,
            (ConnState::Established, OP_RW) => {
                add(&self.counters.tx_bytes, data.len() as u64);
                if c.peer_shut_send {
                    c.mark_rst();
                } else if let Err(err) = c.send_to_host(data) {
                    tracing::debug!("vsock: {key:?}: {err}");
                    c.mark_rst();
                }
            }
            (ConnState::Established, OP_SHUTDOWN) => {
                if hdr.flags & SHUTDOWN_SEND != 0 {
                    c.peer_shutdown_send();
                }
                // The guest closed both ways: it waits for our RST.
                if hdr.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
                    let _ = c.flush_txbuf();
                    c.mark_rst();
                }
            }
            (_, OP_CREDIT_UPDATE) => {}
            (_, OP_CREDIT_REQUEST) => c.want_credit_update(),
            (ConnState::Closing, _) => {}
            // REQUEST on a live connection, RW before RESPONSE, anything else: reset.
            _ => c.mark_rst(),
        }
        if remove_now {
            self.remove(key, ctl);
        } else {
            self.refresh(key, ctl);
        }
    }

    fn guest_connect(&mut self, hdr: &Header, ctl: &EventCtl) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.queue_rst_reply(hdr);
            return;
        }
        let path = format!("{}_{}", self.uds_path.display(), hdr.dst_port);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let conn = Connection::new_peer(stream, self.guest_cid, hdr);
                self.insert(conn, ctl);
            }
            Err(e) => {
                crate::rate_limited_debug!("vsock: guest connect to {path} failed: {e}");
                self.queue_rst_reply(hdr);
            }
        }
    }

    /// The next packet for the guest, with at most `max_data` payload bytes.
    ///
    /// Each queued item is looked at once per call: a connection with nothing that fits
    /// (data owed but `max_data` is 0) goes back to the end of the queue to wait for a
    /// bigger buffer, and must not be popped again here, or this would never return.
    pub fn recv_pkt(&mut self, max_data: usize, ctl: &EventCtl) -> Option<(Header, Vec<u8>)> {
        for _ in 0..self.rxq.len() {
            let item = self.rxq.pop_front()?;
            let key = match item {
                RxItem::Rst(h) => return Some((h, Vec::new())),
                RxItem::Conn(key) => key,
            };
            let Some(e) = self.conns.get_mut(&key) else {
                continue;
            };
            e.in_rxq = false;
            let pkt = e.conn.recv_pkt(max_data);
            self.refresh(key, ctl);
            if let Some((h, d)) = pkt {
                add(&self.counters.rx_bytes, d.len() as u64);
                if h.op == OP_RW && d.is_empty() {
                    continue;
                }
                return Some((h, d));
            }
        }
        None
    }

    /// An event on the listener or a host stream.
    pub fn handle_event(&mut self, sub: u32, events: EventSet, ctl: &EventCtl) {
        if sub == LISTENER_SUB {
            self.accept(ctl);
        } else if self.handshakes.contains_key(&sub) {
            self.read_handshake(sub, ctl);
        } else if let Some(&key) = self.subs.get(&sub) {
            let Some(e) = self.conns.get_mut(&key) else {
                return;
            };
            if events.contains(EventSet::OUT)
                && let Err(err) = e.conn.flush_txbuf()
            {
                tracing::debug!("vsock: {key:?}: {err}");
                e.conn.mark_rst();
            }
            if e.conn.state == ConnState::LocalInit {
                // The client gave up before the guest answered.
                if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    e.conn.mark_rst();
                }
            } else if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                e.conn.host_readable();
            }
            self.refresh(key, ctl);
        }
    }

    fn accept(&mut self, ctl: &EventCtl) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.handshakes.len() + self.conns.len() >= MAX_CONNECTIONS
                || stream.set_nonblocking(true).is_err()
            {
                continue;
            }
            let sub = self.alloc_sub();
            if ctl.add(stream.as_raw_fd(), EventSet::IN, sub).is_ok() {
                self.handshakes.insert(
                    sub,
                    Handshake {
                        stream,
                        buf: Vec::new(),
                        since: Instant::now(),
                    },
                );
            }
        }
    }

    /// Reads a host client's `CONNECT <port>\n`. Anything else closes the client.
    fn read_handshake(&mut self, sub: u32, ctl: &EventCtl) {
        let Some(h) = self.handshakes.get_mut(&sub) else {
            return;
        };
        let mut chunk = [0u8; 64];
        let mut eof = false;
        loop {
            match h.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    h.buf.extend_from_slice(&chunk[..n]);
                    if h.buf.len() > MAX_CONNECT_LINE || h.buf.contains(&b'\n') {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let newline = h.buf.iter().position(|&b| b == b'\n');
        let port = match newline {
            Some(pos) if pos <= MAX_CONNECT_LINE => parse_connect(&h.buf[..pos]),
            Some(_) => None,
            None if h.buf.len() > MAX_CONNECT_LINE || eof => None,
            None => return, // wait for the rest of the line
        };
        let Some(h) = self.handshakes.remove(&sub) else {
            return;
        };
        ctl.remove(h.stream.as_raw_fd());
        let Some(peer_port) = port else {
            tracing::debug!("vsock: bad handshake from host client; closing it");
            inc(&self.counters.errors);
            return;
        };
        let rest = h.buf[newline.map_or(h.buf.len(), |p| p + 1)..].to_vec();
        let local_port = self.alloc_local_port();
        let conn = Connection::new_local(h.stream, self.guest_cid, local_port, peer_port, rest);
        self.insert(conn, ctl);
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// "CONNECT <port>" → port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let port = s.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Connects without blocking the event loop: a listener whose backlog is full refuses
/// (EAGAIN) instead of making us wait.
fn connect_nonblocking(path: &str) -> io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    let bytes = path.as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: creating a socket; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own from here on.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un and len its size.
    let r = unsafe { libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// Writes a short control line to a nonblocking stream, retrying briefly if it is full.
fn write_all_nonblocking(s: &mut UnixStream, mut buf: &[u8]) -> io::Result<()> {
    let mut tries = 0;
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
