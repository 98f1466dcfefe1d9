//! What a device holds between DRIVER_OK and reset, written once for every device.

use virtio_queue::QueueState;

use super::device::ActivateContext;

/// A device's run-time state `S`: set on DRIVER_OK, dropped on reset, so a `Drop` on `S`
/// (the fs worker's) is the teardown. Event-loop devices keep their [`ActivateContext`].
///
/// [`ActivateContext`]: super::device::ActivateContext
pub struct Activation<S> {
    state: Option<S>,
}

impl<S> Default for Activation<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Activation<S> {
    pub const fn new() -> Self {
        Activation { state: None }
    }

    /// DRIVER_OK: from now on the device runs with `state`.
    pub fn activate(&mut self, state: S) {
        self.state = Some(state);
    }

    /// Back to the pre-activation state; drops the state.
    pub fn reset(&mut self) {
        self.state = None;
    }

    /// The state while active. Borrows only this field, so the device's others stay usable.
    pub fn get(&self) -> Option<&S> {
        self.state.as_ref()
    }

    pub fn get_mut(&mut self) -> Option<&mut S> {
        self.state.as_mut()
    }

    /// Runs `f` on `owner` and the state moved out of it (found by `slot`), so `f` may use
    /// all of `owner`, `&self` methods included; the state goes back afterwards. `None`
    /// while inactive.
    pub fn lend<D, R>(
        owner: &mut D,
        slot: impl Fn(&mut D) -> &mut Self,
        f: impl FnOnce(&mut D, &mut S) -> R,
    ) -> Option<R> {
        let mut state = slot(owner).state.take()?;
        let result = f(owner, &mut state);
        slot(owner).state = Some(state);
        Some(result)
    }
}

impl Activation<ActivateContext> {
    /// An event-loop device's queues as it has advanced them, for a snapshot; none while
    /// inactive.
    pub fn queue_states(&self) -> Vec<QueueState> {
        self.get()
            .map(|a| a.queues.iter().map(|q| q.state()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Dev {
        active: Activation<Vec<u32>>,
        seen: usize,
    }

    #[test]
    fn lend_moves_the_state_out_and_back() {
        let mut d = Dev {
            active: Activation::new(),
            seen: 0,
        };
        assert_eq!(Activation::lend(&mut d, |d| &mut d.active, |_, _| ()), None);
        d.active.activate(vec![1, 2]);
        let n = Activation::lend(
            &mut d,
            |d| &mut d.active,
            |d, s| {
                // The owner is whole again, minus the state it lent.
                assert!(d.active.get().is_none());
                s.push(3);
                d.seen = s.len();
                d.seen
            },
        );
        assert_eq!(n, Some(3));
        assert_eq!(d.seen, 3);
        assert_eq!(d.active.get(), Some(&vec![1, 2, 3]));
    }

    #[test]
    fn reset_drops_the_state() {
        let token = Arc::new(());
        let mut a = Activation::new();
        a.activate(token.clone());
        assert_eq!(Arc::strong_count(&token), 2);
        a.reset();
        assert_eq!(Arc::strong_count(&token), 1);
        assert!(a.get_mut().is_none());
    }
}
