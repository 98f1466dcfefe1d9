//! One vsock stream connection between a guest port and a host unix stream.
//!
//! It owns the host stream, the data from the guest that the host has not taken yet
//! (bounded by the buffer we advertise, so a guest that respects credit never overflows
//! it), both directions' credit counters, and flags for the packets it owes the guest.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use crate::devices::virtio::vsock::packet::{
    HOST_CID, Header, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Guest → host bytes we buffer per connection; advertised as our buf_alloc.
pub const TX_BUF_SIZE: u32 = 256 * 1024;
/// Tell the guest about freed buffer space once this much has been forwarded.
const CREDIT_UPDATE_THRESHOLD: u32 = TX_BUF_SIZE / 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent (or owed), waiting for the guest's RESPONSE.
    LocalInit,
    Established,
    /// RST owed or sent; the muxer drops the connection.
    Closing,
}

// Packets owed to the guest.
const PEND_RST: u8 = 1;
const PEND_REQUEST: u8 = 2;
const PEND_RESPONSE: u8 = 4;
const PEND_RW: u8 = 8;
const PEND_CREDIT_UPDATE: u8 = 16;
const PEND_CREDIT_REQUEST: u8 = 32;
const PEND_SHUTDOWN: u8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("guest overflowed the connection buffer ({0} bytes)")]
    TxOverflow(usize),
    #[error("host stream error: {0}")]
    Io(#[from] io::Error),
}

pub struct Connection {
    pub state: ConnState,
    pub stream: UnixStream,
    pub guest_cid: u64,
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    txbuf: VecDeque<u8>,
    /// Host bytes read before the connection was established (after the CONNECT line).
    prefetch: Vec<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    pending: u8,
    /// The host side will send no more (EOF read).
    pub host_eof: bool,
    /// The guest will send no more.
    pub peer_shut_send: bool,
    /// Waiting for the guest's credit before reading more from the host.
    pub credit_blocked: bool,
    /// When the connection was created (for the CONNECT timeout).
    pub since: std::time::Instant,
}

impl Connection {
    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Connection {
            state: ConnState::LocalInit,
            stream,
            guest_cid,
            local_port,
            peer_port,
            txbuf: VecDeque::new(),
            prefetch: Vec::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            pending: 0,
            host_eof: false,
            peer_shut_send: false,
            credit_blocked: false,
            since: std::time::Instant::now(),
        }
    }

    /// A host client asked (CONNECT) for guest port `peer_port`.
    pub fn new_local(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        prefetch: Vec<u8>,
    ) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port);
        c.prefetch = prefetch;
        c.pending = PEND_REQUEST;
        c
    }

    /// The guest connected to a host listener; we owe it a RESPONSE.
    pub fn new_peer(stream: UnixStream, guest_cid: u64, hdr: &Header) -> Self {
        let mut c = Self::new(stream, guest_cid, hdr.dst_port, hdr.src_port);
        c.state = ConnState::Established;
        c.update_peer_credit(hdr);
        c.pending = PEND_RESPONSE;
        c
    }

    pub fn has_pending(&self) -> bool {
        self.pending != 0
    }

    pub fn txbuf_len(&self) -> usize {
        self.txbuf.len()
    }

    /// Bytes the guest can still take from us.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.credit_blocked && self.peer_credit() > 0 {
            self.credit_blocked = false;
        }
    }

    pub fn mark_rst(&mut self) {
        self.state = ConnState::Closing;
        self.pending |= PEND_RST;
    }

    pub fn want_credit_update(&mut self) {
        self.pending |= PEND_CREDIT_UPDATE;
    }

    /// The host stream is readable (or hung up): owe the guest a read.
    pub fn host_readable(&mut self) {
        if self.state == ConnState::Established && !self.host_eof && !self.credit_blocked {
            self.pending |= PEND_RW;
        }
    }

    /// The guest's RESPONSE to our REQUEST.
    pub fn established(&mut self) {
        self.state = ConnState::Established;
        if !self.prefetch.is_empty() {
            self.pending |= PEND_RW;
        }
    }

    /// Whether the muxer should watch the host stream for input and for room to write.
    pub fn wants_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && !self.credit_blocked
            && self.pending & PEND_RW == 0
    }

    /// A connection being reset writes nothing more: watching a dead host stream for
    /// room would wake the loop over and over (EPOLLHUP is level-triggered) until the
    /// guest takes the RST.
    pub fn wants_write(&self) -> bool {
        self.state != ConnState::Closing && !self.txbuf.is_empty()
    }

    /// Guest data for the host: written now if the stream takes it, buffered otherwise.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let mut rest = data;
        if self.txbuf.is_empty() {
            match self.stream.write(rest) {
                Ok(n) => {
                    self.fwd_cnt += n as u32;
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !rest.is_empty() {
            if self.txbuf.len() + rest.len() > TX_BUF_SIZE as usize {
                return Err(ConnError::TxOverflow(self.txbuf.len() + rest.len()));
            }
            self.txbuf.extend(rest);
        }
        self.check_credit_update();
        Ok(())
    }

    /// Writes buffered guest data to the host stream.
    pub fn flush_txbuf(&mut self) -> Result<(), ConnError> {
        while !self.txbuf.is_empty() {
            let (front, _) = self.txbuf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(ConnError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.txbuf.drain(..n);
                    self.fwd_cnt += n as u32;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        self.check_credit_update();
        if self.txbuf.is_empty() && self.peer_shut_send {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    fn check_credit_update(&mut self) {
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= PEND_CREDIT_UPDATE;
        }
    }

    /// The guest will send no more: pass the half-close on once its data is out.
    pub fn peer_shutdown_send(&mut self) {
        self.peer_shut_send = true;
        if self.txbuf.is_empty() {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    fn header(&mut self, op: u16) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn take(&mut self, flag: u8) -> bool {
        let had = self.pending & flag != 0;
        self.pending &= !flag;
        had
    }

    /// The next packet this connection owes the guest, with at most `max_data` payload.
    pub fn recv_pkt(&mut self, max_data: usize) -> Option<(Header, Vec<u8>)> {
        if self.take(PEND_RST) {
            self.pending = 0;
            return Some((self.header(OP_RST), Vec::new()));
        }
        if self.take(PEND_REQUEST) {
            return Some((self.header(OP_REQUEST), Vec::new()));
        }
        if self.take(PEND_RESPONSE) {
            return Some((self.header(OP_RESPONSE), Vec::new()));
        }
        if self.pending & PEND_RW != 0
            && let Some(pkt) = self.read_host(max_data)
        {
            return Some(pkt);
        }
        if self.take(PEND_SHUTDOWN) {
            let mut h = self.header(OP_SHUTDOWN);
            h.flags = SHUTDOWN_SEND;
            return Some((h, Vec::new()));
        }
        if self.take(PEND_CREDIT_REQUEST) {
            return Some((self.header(OP_CREDIT_REQUEST), Vec::new()));
        }
        if self.take(PEND_CREDIT_UPDATE) {
            return Some((self.header(OP_CREDIT_UPDATE), Vec::new()));
        }
        None
    }

    /// Reads host data for the guest, within the guest's credit.
    fn read_host(&mut self, max_data: usize) -> Option<(Header, Vec<u8>)> {
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            // Stop reading until the guest reports free space.
            self.pending &= !PEND_RW;
            self.credit_blocked = true;
            self.pending |= PEND_CREDIT_REQUEST;
            return None;
        }
        let want = credit.min(max_data);
        if want == 0 {
            // No room in this RX buffer; keep the flag for the next one.
            return None;
        }
        let data = if !self.prefetch.is_empty() {
            let n = want.min(self.prefetch.len());
            self.prefetch.drain(..n).collect::<Vec<u8>>()
        } else {
            let mut buf = vec![0u8; want];
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.pending &= !PEND_RW;
                    self.host_eof = true;
                    self.pending |= PEND_SHUTDOWN;
                    return None;
                }
                Ok(n) => {
                    buf.truncate(n);
                    buf
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pending &= !PEND_RW;
                    return None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return None,
                Err(_) => {
                    self.mark_rst();
                    self.pending = PEND_RST;
                    return self.recv_pkt(0);
                }
            }
        };
        // A partial read means the stream is drained for now; a full one may have more.
        if data.len() < want && self.prefetch.is_empty() {
            self.pending &= !PEND_RW;
        }
        self.rx_cnt += data.len() as u32;
        let mut h = self.header(OP_RW);
        h.len = data.len() as u32;
        Some((h, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let hdr = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 5000,
            dst_port: 77,
            buf_alloc: 8,
            fwd_cnt: 0,
            op: OP_REQUEST,
            type_: TYPE_STREAM,
            ..Default::default()
        };
        (Connection::new_peer(a, 3, &hdr), b)
    }

    #[test]
    fn response_then_data_within_credit() {
        let (mut c, mut host) = pair();
        let (h, _) = c.recv_pkt(4096).unwrap();
        assert_eq!(h.op, OP_RESPONSE);
        assert_eq!((h.src_port, h.dst_port), (77, 5000));
        assert!(c.recv_pkt(4096).is_none());
        host.write_all(b"0123456789abcdef").unwrap();
        c.host_readable();
        // Guest advertised 8 bytes of buffer.
        let (h, d) = c.recv_pkt(4096).unwrap();
        assert_eq!(h.op, OP_RW);
        assert_eq!(d, b"01234567");
        // Out of credit: a credit request, and no reading until the guest frees space.
        c.host_readable();
        let (h, _) = c.recv_pkt(4096).unwrap();
        assert_eq!(h.op, OP_CREDIT_REQUEST);
        assert!(c.credit_blocked && !c.wants_read());
        c.update_peer_credit(&Header {
            buf_alloc: 8,
            fwd_cnt: 8,
            ..Default::default()
        });
        assert!(c.wants_read());
        c.host_readable();
        let (_, d) = c.recv_pkt(3).unwrap();
        assert_eq!(d, b"89a");
    }

    #[test]
    fn host_eof_becomes_shutdown_and_guest_overflow_is_an_error() {
        let (mut c, host) = pair();
        c.recv_pkt(0);
        drop(host);
        c.host_readable();
        let (h, _) = c.recv_pkt(100).unwrap();
        assert_eq!(h.op, OP_SHUTDOWN);
        assert_eq!(h.flags, SHUTDOWN_SEND);
        assert!(c.host_eof);
        // Writing to a closed host stream fails.
        assert!(c.send_to_host(b"x").is_err());
    }

    #[test]
    fn txbuf_is_bounded() {
        let (mut c, _host) = pair();
        let chunk = vec![0u8; 64 * 1024];
        let mut overflowed = false;
        for _ in 0..100 {
            if c.send_to_host(&chunk).is_err() {
                overflowed = true;
                break;
            }
        }
        assert!(overflowed);
        assert!(c.txbuf_len() <= TX_BUF_SIZE as usize);
    }
}
