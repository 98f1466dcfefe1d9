//! The control socket: a unix stream socket speaking one JSON object per line.
//!
//! Requests are `{"cmd":"ping"}` (or just the word `ping`); the commands are ping, pause,
//! resume, stop and metrics. Every request gets one JSON line back: `{"ok":true,...}` or
//! `{"ok":false,"error":"..."}`. The types are the contract in `hyper-vmm-api`
//! ([`Request`], [`Reply`]); this module parses and frames, the VMM decides.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

pub use hyper_vmm_api::{Reply, Request, VmState};
use vmm_sys_util::epoll::EventSet;

use crate::event_loop::EventCtl;

/// Longest request line we accept; a client sending more is disconnected.
pub const MAX_REQUEST_LINE: usize = 4096;
/// Sub-tokens: the listener, then connections from CONN_SUB_BASE.
pub const LISTENER_SUB: u32 = 2;
/// Longest a reply write may block the VMM's event loop.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);
pub const CONN_SUB_BASE: u32 = 16;

/// One request line: `{"cmd":"ping"}`, `{"action":"ping"}` or the bare word `ping`. An
/// unknown or malformed request is an `Err` saying why, for the error reply.
pub fn parse_request(line: &str) -> Result<Request, String> {
    Request::from_line(line)
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    conns: HashMap<u32, Conn>,
    next_id: u32,
}

impl ApiServer {
    /// Binds `path` (replacing a stale socket file) and registers it with the loop. The
    /// socket is mode 0600: only our user may control the VM.
    pub fn bind(path: &Path, ctl: &EventCtl) -> io::Result<Self> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let listener = crate::private_socket::bind_private(path)?;
        listener.set_nonblocking(true)?;
        ctl.add(listener.as_raw_fd(), EventSet::IN, LISTENER_SUB)?;
        Ok(ApiServer {
            listener,
            path: path.to_path_buf(),
            conns: HashMap::new(),
            next_id: 0,
        })
    }

    pub fn accept(&mut self, ctl: &EventCtl) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1) % (u32::MAX - CONN_SUB_BASE);
            let sub = CONN_SUB_BASE + id;
            if ctl
                .add(
                    stream.as_raw_fd(),
                    EventSet::IN | EventSet::READ_HANG_UP,
                    sub,
                )
                .is_ok()
            {
                self.conns.insert(
                    sub,
                    Conn {
                        stream,
                        buf: Vec::new(),
                    },
                );
            }
        }
    }

    /// Reads what a connection sent and returns its complete requests, each parsed or
    /// the reason it could not be.
    pub fn read_requests(&mut self, sub: u32, ctl: &EventCtl) -> Vec<Result<Request, String>> {
        let Some(conn) = self.conns.get_mut(&sub) else {
            return Vec::new();
        };
        let mut closed = false;
        let mut chunk = [0u8; 1024];
        // Bounded per wakeup; the level-triggered loop calls again for the rest.
        for _ in 0..64 {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let mut reqs = Vec::new();
        while let Some(pos) = conn.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = conn.buf.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line);
            if !text.trim().is_empty() {
                reqs.push(parse_request(&text));
            }
        }
        if conn.buf.len() > MAX_REQUEST_LINE {
            let _ = conn
                .stream
                .write_all(Reply::error("request line too long").to_line().as_bytes());
            closed = true;
        }
        if closed && reqs.is_empty() {
            self.close(sub, ctl);
        }
        reqs
    }

    /// Sends one reply line; a client that does not take it is disconnected.
    pub fn respond(&mut self, sub: u32, reply: &Reply, ctl: &EventCtl) {
        let Some(conn) = self.conns.get_mut(&sub) else {
            return;
        };
        // Replies are small. A client that does not read them cannot hold up the event
        // loop for longer than the write timeout.
        let _ = conn.stream.set_nonblocking(false);
        let _ = conn.stream.set_write_timeout(Some(REPLY_TIMEOUT));
        let sent = conn.stream.write_all(reply.to_line().as_bytes());
        let _ = conn.stream.set_nonblocking(true);
        if sent.is_err() {
            self.close(sub, ctl);
        }
    }

    pub fn close(&mut self, sub: u32, ctl: &EventCtl) {
        if let Some(c) = self.conns.remove(&sub) {
            ctl.remove(c.stream.as_raw_fd());
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_never_reads_is_dropped_not_waited_for() {
        use crate::event_loop::EventLoop;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let el = EventLoop::new().unwrap();
        let ctl = el.own_ctl();
        let mut api = ApiServer::bind(&path, &ctl).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.set_nonblocking(true).unwrap();
        let flood = "metrics\n".repeat(20_000);
        let _ = client.write(flood.as_bytes());
        api.accept(&ctl);
        let sub = *api.conns.keys().next().unwrap();
        let big = Reply::error("x".repeat(4096));
        let t = std::time::Instant::now();
        while api.conns.contains_key(&sub) {
            for _ in api.read_requests(sub, &ctl) {
                api.respond(sub, &big, &ctl);
            }
            let _ = client.write(flood.as_bytes());
            assert!(
                t.elapsed().as_secs() < 10,
                "server stuck on a client that never reads"
            );
        }
    }

    #[test]
    fn control_socket_is_owner_only_even_under_umask_0() {
        use crate::event_loop::EventLoop;
        use crate::private_socket::{SOCKET_MODE, mode_of, with_umask};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let el = EventLoop::new().unwrap();
        let ctl = el.own_ctl();
        let api = with_umask(0, || ApiServer::bind(&path, &ctl)).unwrap();
        assert_eq!(mode_of(&path), SOCKET_MODE, "{:o}", mode_of(&path));
        UnixStream::connect(&path).unwrap();
        drop(api);
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn request_parsing() {
        assert_eq!(parse_request("ping\n"), Ok(Request::Ping));
        assert_eq!(parse_request(r#"{"cmd":"pause"}"#), Ok(Request::Pause));
        assert_eq!(parse_request(r#"{"action":"stop"}"#), Ok(Request::Stop));
        assert_eq!(parse_request(" metrics "), Ok(Request::Metrics));
        for bad in ["{", r#"{"x":1}"#, "reboot", r#"{"cmd":"reboot"}"#] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_are_framed_by_lines_and_a_bad_one_is_answered() {
        use crate::event_loop::EventLoop;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let el = EventLoop::new().unwrap();
        let ctl = el.own_ctl();
        let mut api = ApiServer::bind(&path, &ctl).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client
            .write_all(b"ping\n\n{\"cmd\":\"pause\"}\nbogus\n{\"cmd\":")
            .unwrap();
        api.accept(&ctl);
        let sub = *api.conns.keys().next().unwrap();
        let reqs = api.read_requests(sub, &ctl);
        assert_eq!(reqs.len(), 3, "{reqs:?}");
        assert_eq!(reqs[0], Ok(Request::Ping));
        assert_eq!(reqs[1], Ok(Request::Pause));
        let why = reqs[2].clone().unwrap_err();
        assert!(why.contains("bogus"), "{why}");
        api.respond(sub, &Reply::error(why), &ctl);
        client.write_all(b"\"resume\"}\n").unwrap();
        assert_eq!(api.read_requests(sub, &ctl), vec![Ok(Request::Resume)]);
        api.respond(sub, &Reply::done(), &ctl);
        let mut r = std::io::BufReader::new(client);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        assert!(!Reply::from_line(&line).unwrap().is_ok(), "{line}");
        line.clear();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        assert_eq!(line, "{\"ok\":true}\n");
    }
}
