//! A one-shot, executor-local event many tasks can wait on (shutdown).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Inner {
    fired: Cell<bool>,
    next: Cell<u64>,
    wakers: RefCell<HashMap<u64, Waker>>,
}

/// Fires once; every [`Event::wait`] future completes then.
#[derive(Clone, Default)]
pub struct Event(Rc<Inner>);

impl Event {
    /// A new, unfired event.
    pub fn new() -> Event {
        Event::default()
    }

    /// Fires the event and wakes every waiter.
    pub fn fire(&self) {
        self.0.fired.set(true);
        let wakers: Vec<Waker> = self.0.wakers.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Whether it fired.
    pub fn is_fired(&self) -> bool {
        self.0.fired.get()
    }

    /// Completes when the event fires. A dropped waiter leaves nothing behind.
    pub fn wait(&self) -> Wait {
        let id = self.0.next.get();
        self.0.next.set(id + 1);
        Wait {
            event: self.clone(),
            id,
        }
    }
}

/// The future of [`Event::wait`].
pub struct Wait {
    event: Event,
    id: u64,
}

impl Future for Wait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.is_fired() {
            return Poll::Ready(());
        }
        self.event
            .0
            .wakers
            .borrow_mut()
            .insert(self.id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        self.event.0.wakers.borrow_mut().remove(&self.id);
    }
}
