//! One epoll loop on the VMM's main thread serves every host-side event: queue
//! notifications (ioeventfds), device sockets and taps, the control socket and VM exit.
//!
//! Each registered fd carries a token: the owner's id in the upper 32 bits and an
//! owner-defined sub-token in the lower 32 bits.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::devices::bus::lock;

/// Something that reacts to events on fds it registered through its [`EventCtl`].
pub trait EventHandler: Send {
    fn handle_event(&mut self, sub: u32, events: EventSet, ctl: &EventCtl);
}

/// An owner's handle on the loop: adds and removes its fds.
#[derive(Clone)]
pub struct EventCtl {
    epoll: Arc<Epoll>,
    owner: u32,
}

impl EventCtl {
    fn token(&self, sub: u32) -> u64 {
        (u64::from(self.owner) << 32) | u64::from(sub)
    }

    pub fn add(&self, fd: RawFd, events: EventSet, sub: u32) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, self.token(sub)),
        )
    }

    pub fn modify(&self, fd: RawFd, events: EventSet, sub: u32) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, self.token(sub)),
        )
    }

    /// Removing an fd that is not registered is not an error worth reporting.
    pub fn remove(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

pub struct EventLoop {
    epoll: Arc<Epoll>,
    handlers: Vec<Arc<Mutex<dyn EventHandler>>>,
}

/// An event for the loop's owner itself (owner id 0), not for a registered handler.
pub struct OwnEvent {
    pub sub: u32,
    pub events: EventSet,
}

impl EventLoop {
    pub fn new() -> io::Result<Self> {
        Ok(EventLoop {
            epoll: Arc::new(Epoll::new()?),
            handlers: Vec::new(),
        })
    }

    /// The handle for events the loop's owner handles itself (owner id 0).
    pub fn own_ctl(&self) -> EventCtl {
        EventCtl {
            epoll: self.epoll.clone(),
            owner: 0,
        }
    }

    /// Reserves an owner id for `handler` and returns its handle. The handler registers
    /// its fds through the handle.
    pub fn add_handler(&mut self, handler: Arc<Mutex<dyn EventHandler>>) -> EventCtl {
        self.handlers.push(handler);
        EventCtl {
            epoll: self.epoll.clone(),
            owner: self.handlers.len() as u32,
        }
    }

    /// Reserves the next owner id before its handler exists (for devices that need their
    /// handle at construction). `set_handler` must follow.
    pub fn next_ctl(&self) -> EventCtl {
        EventCtl {
            epoll: self.epoll.clone(),
            owner: self.handlers.len() as u32 + 1,
        }
    }

    /// Waits up to `timeout_ms` (-1: forever), dispatches handler events, and returns the
    /// events addressed to the owner.
    pub fn run_once(&self, timeout_ms: i32) -> io::Result<Vec<OwnEvent>> {
        let mut events = vec![EpollEvent::default(); 64];
        let n = match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        let mut own = Vec::new();
        for ev in &events[..n] {
            let owner = (ev.data() >> 32) as u32;
            let sub = ev.data() as u32;
            if owner == 0 {
                own.push(OwnEvent {
                    sub,
                    events: ev.event_set(),
                });
                continue;
            }
            if let Some(h) = self.handlers.get(owner as usize - 1) {
                let ctl = EventCtl {
                    epoll: self.epoll.clone(),
                    owner,
                };
                lock(h).handle_event(sub, ev.event_set(), &ctl);
            }
        }
        Ok(own)
    }
}
