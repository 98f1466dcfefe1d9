//! The one place that calls `waitpid`. PID 1 (and a subreaper agent) inherits every
//! orphan, so a single SIGCHLD loop reaps them all and hands each exit status to whoever
//! registered for that pid. Statuses nobody asked for yet are kept (bounded) so a
//! process that dies before its waiter registers is not lost.
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use tokio::sync::oneshot;

const MAX_UNCLAIMED: usize = 1024;

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<i32>>,
    unclaimed: HashMap<i32, i32>,
    order: VecDeque<i32>,
}

pub struct Reaper {
    state: Mutex<State>,
}

/// Exit code, or 128 + signal for a process killed by a signal.
pub fn exit_code(ws: WaitStatus) -> Option<(i32, i32)> {
    match ws {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), code)),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), 128 + sig as i32)),
        _ => None,
    }
}

impl Reaper {
    pub fn global() -> &'static Reaper {
        static R: OnceLock<Reaper> = OnceLock::new();
        R.get_or_init(|| Reaper {
            state: Mutex::new(State::default()),
        })
    }

    /// Runs `spawn` (which forks a child and returns its pid) with the table locked, so
    /// the child's exit cannot be dispatched before the waiter is in place, and any stale
    /// status of an earlier process with the same pid is dropped.
    pub fn spawn_watched<T, E>(
        &self,
        spawn: impl FnOnce() -> Result<(T, i32), E>,
    ) -> Result<(T, oneshot::Receiver<i32>), E> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (v, pid) = spawn()?;
        st.unclaimed.remove(&pid);
        let (tx, rx) = oneshot::channel();
        st.waiters.insert(pid, tx);
        Ok((v, rx))
    }

    /// Registers interest in `pid`, which must not have been reapable before the caller
    /// learnt it (see the helper's ack in `process`), so a stored status is stale.
    pub fn watch_fresh(&self, pid: i32) -> oneshot::Receiver<i32> {
        self.spawn_watched(|| Ok::<_, ()>(((), pid)))
            .map(|(_, rx)| rx)
            .unwrap_or_else(|_| oneshot::channel().1)
    }

    /// Reaps everything that has exited.
    pub fn reap(&self) {
        loop {
            match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => {
                    if let Some((pid, code)) = exit_code(ws) {
                        self.dispatch(pid, code);
                    }
                }
            }
        }
    }

    fn dispatch(&self, pid: i32, code: i32) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = st.waiters.remove(&pid) {
            let _ = tx.send(code);
            return;
        }
        tracing::debug!(pid, code, "reaped orphan");
        st.unclaimed.insert(pid, code);
        st.order.push_back(pid);
        while st.order.len() > MAX_UNCLAIMED {
            if let Some(old) = st.order.pop_front() {
                st.unclaimed.remove(&old);
            }
        }
    }

    /// Reaps on every SIGCHLD, forever.
    pub async fn run(&'static self) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigchld = signal(SignalKind::child())?;
        loop {
            self.reap();
            // A lost wakeup must not strand a zombie: poll now and then as well.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sigchld.recv()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_status_is_128_plus_n() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_code(WaitStatus::Exited(p, 3)), Some((5, 3)));
        assert_eq!(
            exit_code(WaitStatus::Signaled(
                p,
                nix::sys::signal::Signal::SIGKILL,
                false
            )),
            Some((5, 137))
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }

    #[test]
    fn status_before_waiter_is_kept_and_stale_ones_dropped() {
        let r = Reaper {
            state: Mutex::new(State::default()),
        };
        r.dispatch(10, 7);
        // A fresh process reusing pid 10 must not see the old status.
        let mut rx = r.watch_fresh(10);
        assert!(rx.try_recv().is_err());
        r.dispatch(10, 1);
        assert_eq!(rx.try_recv().unwrap(), 1);
        for i in 0..(MAX_UNCLAIMED as i32 + 10) {
            r.dispatch(1000 + i, 0);
        }
        assert_eq!(r.state.lock().unwrap().unclaimed.len(), MAX_UNCLAIMED);
    }
}
