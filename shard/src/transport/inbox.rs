//! A core's inbox: raft messages from other stores (and other cores of this one) that
//! arrived for peers on this core, waiting for the core's raft driver to take them.

use nokv_raft::transport::RaftEnvelope;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Bounded FIFO of arrived messages, local to one executor. A push into a full inbox is
/// refused (the caller counts the drop).
pub struct Inbox {
    queue: RefCell<VecDeque<RaftEnvelope>>,
    capacity: usize,
    wakers: RefCell<HashMap<u64, Waker>>,
    next_waiter: Cell<u64>,
}

impl Inbox {
    /// An empty inbox holding at most `capacity` messages.
    pub fn new(capacity: usize) -> Inbox {
        Inbox {
            queue: RefCell::new(VecDeque::new()),
            capacity: capacity.max(1),
            wakers: RefCell::new(HashMap::new()),
            next_waiter: Cell::new(0),
        }
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Takes up to `max` messages, oldest first (in arrival order per sender).
    pub fn drain(&self, max: usize) -> Vec<RaftEnvelope> {
        let mut q = self.queue.borrow_mut();
        let n = max.min(q.len());
        q.drain(..n).collect()
    }

    /// Completes once a message waits (at once if one does). Any number of waiters.
    pub fn ready(&self) -> Ready<'_> {
        let id = self.next_waiter.get();
        self.next_waiter.set(id + 1);
        Ready { inbox: self, id }
    }

    /// Adds `env`; gives it back if the inbox is full.
    pub(crate) fn push(&self, env: RaftEnvelope) -> Result<(), RaftEnvelope> {
        {
            let mut q = self.queue.borrow_mut();
            if q.len() >= self.capacity {
                return Err(env);
            }
            q.push_back(env);
        }
        let wakers: Vec<Waker> = self.wakers.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
        Ok(())
    }
}

/// The future of [`Inbox::ready`].
pub struct Ready<'a> {
    inbox: &'a Inbox,
    id: u64,
}

impl Future for Ready<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.inbox.is_empty() {
            return Poll::Ready(());
        }
        self.inbox
            .wakers
            .borrow_mut()
            .insert(self.id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Ready<'_> {
    fn drop(&mut self) {
        self.inbox.wakers.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: u64) -> RaftEnvelope {
        RaftEnvelope {
            region_id: n,
            ..RaftEnvelope::default()
        }
    }

    #[test]
    fn bounded_fifo_that_wakes_its_waiters() {
        let inbox = Inbox::new(2);
        let mut ready = Box::pin(inbox.ready());
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(ready.as_mut().poll(cx).is_pending());
        inbox.push(env(1)).expect("room");
        inbox.push(env(2)).expect("room");
        assert_eq!(inbox.push(env(3)), Err(env(3)));
        assert!(ready.as_mut().poll(cx).is_ready());
        assert_eq!(inbox.drain(1), vec![env(1)]);
        inbox.push(env(4)).expect("room again");
        assert_eq!(inbox.drain(10), vec![env(2), env(4)]);
        assert!(inbox.is_empty());
        drop(ready);
        assert!(
            inbox.wakers.borrow().is_empty(),
            "a dropped waiter leaves nothing"
        );
    }
}
