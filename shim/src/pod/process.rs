//! What the shim knows about one process of a task: a container's init (empty exec id)
//! or an exec'd process. The guest owns the real process; this is its host-side record,
//! with the copies of its stdio.
use std::time::SystemTime;

use tokio::sync::watch;

use super::io::{OutputCopy, StdinCopy};

/// containerd's stdio paths for a process (FIFOs or a terminal), empty when unused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

/// Exit status of a task whose VM died under it (what Kata and runc-in-a-VM report).
pub const VM_DIED_EXIT_STATUS: u32 = 255;

pub struct Process {
    pub exec_id: String,
    pub stdio: Stdio,
    pub state: State,
    /// The OCI process (JSON) of an exec, kept from Exec until Start.
    pub exec_spec: Option<Vec<u8>>,
    /// Output copies, drained before the exit is reported.
    pub outputs: Vec<OutputCopy>,
    pub stdin: Option<StdinCopy>,
    exit_tx: watch::Sender<Option<Exit>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Process {
    pub fn new(exec_id: &str, stdio: Stdio) -> Self {
        Self {
            exec_id: exec_id.to_string(),
            stdio,
            state: State::Created,
            exec_spec: None,
            outputs: Vec::new(),
            stdin: None,
            exit_tx: watch::channel(None).0,
        }
    }

    /// Records the exit once; later calls (a VM death after a normal exit) change nothing.
    /// Returns whether this call recorded it.
    pub fn set_exited(&mut self, status: u32) -> bool {
        if self.exit().is_some() {
            return false;
        }
        self.state = State::Stopped;
        self.exit_tx.send_replace(Some(Exit {
            status,
            at: SystemTime::now(),
        }));
        true
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    /// A receiver that sees the exit; `Wait` awaits it without holding any lock.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit_tx.subscribe()
    }

    /// Still to be started, or running (paused included).
    pub fn is_live(&self) -> bool {
        self.state != State::Stopped
    }

    /// Stops every stdio copy (the FIFOs close).
    pub fn abort_io(&mut self) {
        for o in self.outputs.drain(..) {
            o.abort();
        }
        self.stdin = None;
    }
}

/// Waits until the process behind `rx` has exited.
pub async fn wait_exit(mut rx: watch::Receiver<Option<Exit>>) -> Exit {
    loop {
        if let Some(exit) = *rx.borrow_and_update() {
            return exit;
        }
        if rx.changed().await.is_err() {
            // The record was dropped (task deleted) without an exit: report the VM case.
            return Exit {
                status: VM_DIED_EXIT_STATUS,
                at: SystemTime::now(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_is_recorded_once_and_seen_by_waiters() {
        let mut p = Process::new("", Stdio::default());
        assert!(p.is_live());
        let waiter = tokio::spawn(wait_exit(p.exit_watch()));
        p.state = State::Running;
        assert!(p.set_exited(3));
        assert!(
            !p.set_exited(VM_DIED_EXIT_STATUS),
            "second exit must not overwrite"
        );
        assert_eq!(waiter.await.unwrap().status, 3);
        assert_eq!(p.exit().unwrap().status, 3);
        assert_eq!(p.state, State::Stopped);
        assert!(!p.is_live());
        // A waiter that comes after the exit returns at once.
        assert_eq!(wait_exit(p.exit_watch()).await.status, 3);
    }
}
