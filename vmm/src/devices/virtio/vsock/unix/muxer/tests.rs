//! Muxer tests with real unix sockets; the test plays the guest by calling send_pkt and
//! recv_pkt directly.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::devices::virtio::test_utils::{check_cases, watchdog};
use crate::event_loop::{EventHandler, EventLoop};

const GUEST_CID: u64 = 3;

struct Handler(Arc<Mutex<Muxer>>);
impl EventHandler for Handler {
    fn handle_event(&mut self, sub: u32, events: EventSet, ctl: &EventCtl) {
        self.0.lock().unwrap().handle_event(sub, events, ctl);
    }
}

struct Rig {
    _dir: tempfile::TempDir,
    uds: std::path::PathBuf,
    mux: Arc<Mutex<Muxer>>,
    el: EventLoop,
    ctl: EventCtl,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mux = Arc::new(Mutex::new(
            Muxer::new(GUEST_CID, &uds, Arc::new(DeviceCounters::default())).unwrap(),
        ));
        let mut el = EventLoop::new().unwrap();
        let ctl = el.add_handler(Arc::new(Mutex::new(Handler(mux.clone()))));
        mux.lock().unwrap().activate(&ctl).unwrap();
        Rig {
            _dir: dir,
            uds,
            mux,
            el,
            ctl,
        }
    }

    /// Runs the event loop until it is idle.
    fn pump(&self) {
        for _ in 0..4 {
            self.el.run_once(5).unwrap();
        }
    }

    fn recv(&self) -> Option<(Header, Vec<u8>)> {
        self.pump();
        self.mux.lock().unwrap().recv_pkt(64 * 1024, &self.ctl)
    }

    fn recv_all(&self) -> Vec<(Header, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(p) = self.recv() {
            v.push(p);
        }
        v
    }

    fn send(&self, hdr: Header, data: &[u8]) {
        let mut h = hdr;
        h.len = data.len() as u32;
        self.mux.lock().unwrap().send_pkt(&h, data, &self.ctl);
        self.pump();
    }

    fn client(&self, line: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(line).unwrap();
        s
    }
}

/// A packet from the guest's `gport` to host port `hport`.
fn from_guest(op: u16, gport: u32, hport: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: gport,
        dst_port: hport,
        type_: TYPE_STREAM,
        op,
        buf_alloc,
        fwd_cnt,
        ..Default::default()
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while let Ok(1) = s.read(&mut b) {
        out.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 16];
    matches!(s.read(&mut b), Ok(0))
        || matches!(s.read(&mut b), Err(e) if e.kind() == io::ErrorKind::ConnectionReset)
}

/// Host client connects to guest port `gport`; returns the stream and our host port.
fn connect(rig: &Rig, gport: u32, buf_alloc: u32) -> (UnixStream, u32) {
    let mut c = rig.client(format!("CONNECT {gport}\n").as_bytes());
    let (req, _) = rig.recv().expect("REQUEST");
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(req.dst_port, gport);
    assert_eq!(req.dst_cid, GUEST_CID);
    rig.send(
        from_guest(OP_RESPONSE, gport, req.src_port, buf_alloc, 0),
        &[],
    );
    assert_eq!(read_line(&mut c), format!("OK {}\n", req.src_port));
    (c, req.src_port)
}

#[test]
fn connect_handshake_and_data_both_ways() {
    let rig = Rig::new();
    let (mut c, hport) = connect(&rig, 1024, 65536);
    assert!(hport >= LOCAL_PORT_FIRST);
    c.write_all(b"hello").unwrap();
    let (h, d) = rig.recv().unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RW, hport, 1024));
    assert_eq!(d, b"hello");
    rig.send(from_guest(OP_RW, 1024, hport, 65536, 5), b"world");
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
    // Bytes written straight after the CONNECT line are not lost.
    let mut c2 = rig.client(b"CONNECT 7\npre");
    let (req, _) = rig.recv().unwrap();
    rig.send(from_guest(OP_RESPONSE, 7, req.src_port, 4096, 0), &[]);
    assert!(read_line(&mut c2).starts_with("OK "));
    let (h, d) = rig.recv().unwrap();
    assert_eq!((h.op, d.as_slice()), (OP_RW, &b"pre"[..]));
}

#[test]
fn bad_handshakes_are_closed() {
    let rig = Rig::new();
    // (name, what the client writes, whether it then stops writing)
    let cases: [(&str, &[u8], bool); 6] = [
        ("not CONNECT", b"HELLO 12\n", false),
        ("line too long", &[b'C'; MAX_CONNECT_LINE + 8], false),
        ("port not a number", b"CONNECT 12x\n", false),
        ("empty port", b"CONNECT \n", false),
        ("port overflows", b"CONNECT 99999999999\n", false),
        ("hang-up mid-line", b"CONN", true),
    ];
    let mut clients: Vec<_> = cases
        .iter()
        .map(|&(name, line, hang_up)| {
            let c = rig.client(line);
            if hang_up {
                c.shutdown(Shutdown::Write).unwrap();
            }
            (name, c)
        })
        .collect();
    rig.pump();
    check_cases(clients.iter_mut().map(|(n, c)| (*n, c)), |c| {
        assert!(is_closed(c))
    });
    assert!(rig.recv().is_none(), "no packet for the guest");
    // Unknown guest port: the guest answers RST and the client is closed.
    let mut c = rig.client(b"CONNECT 4444\n");
    let (req, _) = rig.recv().unwrap();
    rig.send(from_guest(OP_RST, 4444, req.src_port, 0, 0), &[]);
    assert!(is_closed(&mut c));
    assert_eq!(rig.mux.lock().unwrap().connection_count(), 0);
}

#[test]
fn many_connections() {
    let rig = Rig::new();
    let mut clients: Vec<UnixStream> = (0..40)
        .map(|i| rig.client(format!("CONNECT {}\n", 2000 + i).as_bytes()))
        .collect();
    let reqs = rig.recv_all();
    assert_eq!(reqs.len(), 40);
    let mut ports: Vec<u32> = reqs.iter().map(|(h, _)| h.src_port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 40, "distinct host ports");
    for (h, _) in &reqs {
        rig.send(
            from_guest(OP_RESPONSE, h.dst_port, h.src_port, 4096, 0),
            &[],
        );
    }
    for c in &mut clients {
        assert!(read_line(c).starts_with("OK "));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("msg{i}").as_bytes()).unwrap();
    }
    let data = rig.recv_all();
    assert_eq!(data.len(), 40);
    for (h, d) in data {
        assert_eq!(d, format!("msg{}", h.dst_port - 2000).into_bytes());
    }
    assert_eq!(rig.mux.lock().unwrap().connection_count(), 40);
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let rig = Rig::new();
    let (mut c, hport) = connect(&rig, 1024, 16);
    c.write_all(&[7u8; 100]).unwrap();
    let (h, d) = rig.recv().unwrap();
    assert_eq!((h.op, d.len()), (OP_RW, 16));
    let (h, _) = rig.recv().unwrap();
    assert_eq!(h.op, OP_CREDIT_REQUEST);
    assert!(
        rig.recv().is_none(),
        "nothing more until the guest frees space"
    );
    rig.send(from_guest(OP_CREDIT_UPDATE, 1024, hport, 16, 16), &[]);
    let (h, d) = rig.recv().unwrap();
    assert_eq!((h.op, d.len()), (OP_RW, 16));
}

#[test]
fn guest_to_host_credit_updates_and_overflow() {
    let rig = Rig::new();
    let (c, hport) = connect(&rig, 1024, 65536);
    // The host reads nothing: the stream fills, then our buffer; a guest that ignores the
    // credit we advertised gets reset.
    let chunk = vec![1u8; 32 * 1024];
    let mut reset = false;
    for _ in 0..64 {
        rig.send(from_guest(OP_RW, 1024, hport, 65536, 0), &chunk);
        if rig.recv_all().iter().any(|(h, _)| h.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset);
    drop(c);
    // A reader that keeps up gets credit updates as it consumes.
    let (mut c, hport) = connect(&rig, 1025, 65536);
    let reader = std::thread::spawn(move || {
        let mut total = 0;
        let mut buf = vec![0u8; 65536];
        while total < 256 * 1024 {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    });
    let mut updates = 0;
    for _ in 0..8 {
        rig.send(from_guest(OP_RW, 1025, hport, 65536, 0), &chunk);
        std::thread::sleep(Duration::from_millis(5));
        rig.pump();
        updates += rig
            .recv_all()
            .iter()
            .filter(|(h, _)| h.op == OP_CREDIT_UPDATE)
            .count();
    }
    assert_eq!(reader.join().unwrap(), 256 * 1024);
    assert!(updates >= 1);
}

#[test]
fn half_close_both_directions() {
    let rig = Rig::new();
    let (mut c, hport) = connect(&rig, 1024, 65536);
    // Host stops sending: the guest hears SHUTDOWN(SEND) but can still send.
    c.shutdown(Shutdown::Write).unwrap();
    let (h, _) = rig.recv().unwrap();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    rig.send(from_guest(OP_RW, 1024, hport, 65536, 0), b"reply");
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"reply");
    // Guest stops sending: the host reads EOF.
    rig.send(from_guest(OP_SHUTDOWN, 1024, hport, 65536, 0), &[]);
    let mut h = from_guest(OP_SHUTDOWN, 1024, hport, 65536, 0);
    h.flags = SHUTDOWN_SEND;
    rig.send(h, &[]);
    assert!(is_closed(&mut c));
    // Full shutdown from the guest: we answer RST and forget the connection.
    h.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    rig.send(h, &[]);
    let (r, _) = rig.recv().unwrap();
    assert_eq!(r.op, OP_RST);
    assert_eq!(rig.mux.lock().unwrap().connection_count(), 0);
}

#[test]
fn guest_initiated_connections() {
    let rig = Rig::new();
    let listener = UnixListener::bind(format!("{}_5000", rig.uds.display())).unwrap();
    rig.send(from_guest(OP_REQUEST, 3333, 5000, 4096, 0), &[]);
    let (h, _) = rig.recv().unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RESPONSE, 5000, 3333));
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    rig.send(from_guest(OP_RW, 3333, 5000, 4096, 0), b"ping");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    s.write_all(b"pong").unwrap();
    let (h, d) = rig.recv().unwrap();
    assert_eq!((h.op, d.as_slice()), (OP_RW, &b"pong"[..]));
    // Nobody listens on 5001: RST.
    rig.send(from_guest(OP_REQUEST, 3334, 5001, 4096, 0), &[]);
    let (h, _) = rig.recv().unwrap();
    assert_eq!((h.op, h.dst_port), (OP_RST, 3334));
}

#[test]
fn hostile_packets() {
    let rig = Rig::new();
    type Case = Box<dyn Fn(&Rig)>;
    let mut cases: Vec<(String, Case)> = vec![
        (
            "wrong source CID: dropped silently".into(),
            Box::new(|rig| {
                let mut h = from_guest(OP_REQUEST, 1, 5000, 0, 0);
                h.src_cid = 99;
                rig.send(h, &[]);
                assert!(rig.recv().is_none());
            }),
        ),
        (
            "not a stream packet: RST".into(),
            Box::new(|rig| {
                let mut h = from_guest(OP_REQUEST, 1, 5000, 0, 0);
                h.type_ = 2;
                rig.send(h, &[]);
                assert_eq!(rig.recv().unwrap().0.op, OP_RST);
            }),
        ),
    ];
    // Data, shutdown or credit for a connection that does not exist: RST.
    for op in [OP_RW, OP_SHUTDOWN, OP_CREDIT_UPDATE, OP_RESPONSE, 77] {
        cases.push((
            format!("op {op} without a connection: RST"),
            Box::new(move |rig| {
                rig.send(from_guest(op, 1, 5000, 0, 0), b"xx");
                assert_eq!(rig.recv().unwrap().0.op, OP_RST, "op {op}");
            }),
        ));
    }
    cases.push((
        "a stray RST gets no answer".into(),
        Box::new(|rig| {
            rig.send(from_guest(OP_RST, 1, 5000, 0, 0), &[]);
            assert!(rig.recv().is_none());
        }),
    ));
    cases.push((
        "data before RESPONSE on a host-initiated connection resets it".into(),
        Box::new(|rig| {
            let mut c = rig.client(b"CONNECT 9\n");
            let (req, _) = rig.recv().unwrap();
            rig.send(from_guest(OP_RW, 9, req.src_port, 4096, 0), b"early");
            assert_eq!(rig.recv().unwrap().0.op, OP_RST);
            assert!(is_closed(&mut c));
        }),
    ));
    // One muxer for all, in this order, as a guest would send them.
    check_cases(cases, |case| case(&rig));
}

#[test]
fn guest_connect_to_a_full_listener_does_not_block() {
    let rig = Rig::new();
    let path = format!("{}_6000", rig.uds.display());
    let _listener = listen_with_backlog(&path, 1);
    // Fill the backlog with clients nobody accepts.
    let mut fillers = Vec::new();
    for _ in 0..64 {
        match super::connect_nonblocking(&path) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    let t = std::time::Instant::now();
    rig.send(from_guest(OP_REQUEST, 3, 6000, 4096, 0), &[]);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(rig.recv().unwrap().0.op, OP_RST);
}

#[test]
fn client_hanging_up_before_the_guest_answers_is_cleaned_up() {
    let rig = Rig::new();
    let c = rig.client(b"CONNECT 1024\n");
    let (req, _) = rig.recv().unwrap();
    assert_eq!(req.op, OP_REQUEST);
    drop(c);
    let (rst, _) = rig.recv().unwrap();
    assert_eq!((rst.op, rst.src_port), (OP_RST, req.src_port));
    assert_eq!(rig.mux.lock().unwrap().connection_count(), 0);
    // A late RESPONSE from the guest is answered with RST, not a crash.
    rig.send(from_guest(OP_RESPONSE, 1024, req.src_port, 4096, 0), &[]);
    assert_eq!(rig.recv().unwrap().0.op, OP_RST);
}

/// A listener with a tiny backlog (std always asks for the maximum).
fn listen_with_backlog(path: &str, backlog: i32) -> UnixListener {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket/bind/listen calls on a fresh fd; results are checked.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(libc::listen(fd, backlog), 0);
        UnixListener::from_raw_fd(fd)
    }
}

#[test]
fn stale_handshakes_and_unanswered_connects_time_out() {
    let rig = Rig::new();
    let mut silent = rig.client(b"CONN");
    let mut waiting = rig.client(b"CONNECT 1024\n");
    let (req, _) = rig.recv().unwrap();
    assert_eq!(req.op, OP_REQUEST);
    // Nothing expires early.
    rig.mux
        .lock()
        .unwrap()
        .sweep(std::time::Instant::now(), &rig.ctl);
    assert!(rig.recv().is_none());
    assert_eq!(rig.mux.lock().unwrap().connection_count(), 1);
    let later = std::time::Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(1);
    rig.mux.lock().unwrap().sweep(later, &rig.ctl);
    rig.pump();
    assert!(is_closed(&mut silent));
    let (rst, _) = rig.recv().unwrap();
    assert_eq!((rst.op, rst.src_port), (OP_RST, req.src_port));
    assert!(is_closed(&mut waiting));
    assert_eq!(rig.mux.lock().unwrap().connection_count(), 0);
}

#[test]
fn a_buffer_with_no_room_for_payload_leaves_the_data_queued() {
    let rig = Rig::new();
    let (mut with_data, hport) = connect(&rig, 1024, 65536);
    with_data.write_all(b"hello").unwrap();
    rig.pump();
    // A second connection owes the guest a header-only packet (its REQUEST).
    let _waiting = rig.client(b"CONNECT 2048\n");
    rig.pump();
    let recv_no_room = || {
        let _dog = watchdog("recv_pkt with no room for payload", Duration::from_secs(10));
        rig.mux.lock().unwrap().recv_pkt(0, &rig.ctl)
    };
    // One pass: the REQUEST fits, the data does not and waits.
    let (h, d) = recv_no_room().expect("the REQUEST fits a header-only buffer");
    assert_eq!((h.op, h.dst_port, d.len()), (OP_REQUEST, 2048, 0));
    assert!(recv_no_room().is_none());
    assert!(recv_no_room().is_none());
    assert!(
        rig.mux.lock().unwrap().has_pending_rx(),
        "the data is still owed"
    );
    let (h, d) = rig.recv().expect("data, once a buffer has room");
    assert_eq!(
        (h.op, h.src_port, d.as_slice()),
        (OP_RW, hport, &b"hello"[..])
    );
    assert!(rig.recv().is_none());
}

#[test]
fn a_reset_connection_to_a_dead_host_stream_is_not_watched() {
    let rig = Rig::new();
    let (c, hport) = connect(&rig, 1024, 1 << 20);
    // The host reads nothing, so guest data piles up in our buffer...
    let chunk = vec![1u8; 32 * 1024];
    for _ in 0..8 {
        rig.send(from_guest(OP_RW, 1024, hport, 1 << 20, 0), &chunk);
    }
    let key = (hport, 1024);
    assert!(rig.mux.lock().unwrap().conns[&key].conn.txbuf_len() > 0);
    // ...then the host hangs up; the guest posts no RX buffer, so the RST waits.
    drop(c);
    rig.pump();
    let mux = rig.mux.lock().unwrap();
    let e = &mux.conns[&key];
    assert_eq!(e.conn.state, ConnState::Closing);
    assert!(e.interest.is_empty(), "still watched: {:?}", e.interest);
}

#[test]
fn host_socket_is_owner_only_even_under_umask_0() {
    use crate::private_socket::{SOCKET_MODE, mode_of, with_umask};
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    // A stale file in the way is replaced, and its mode is not inherited.
    std::fs::write(&uds, b"").unwrap();
    std::fs::set_permissions(&uds, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let mode = with_umask(0, || {
        let _mux = Muxer::new(GUEST_CID, &uds, Arc::new(DeviceCounters::default())).unwrap();
        mode_of(&uds)
    });
    assert_eq!(mode, SOCKET_MODE, "{mode:o}");
    assert!(!uds.exists(), "removed on drop");
}
