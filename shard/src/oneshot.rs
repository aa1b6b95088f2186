//! A single-threaded one-shot slot: how a reply gets back to the task waiting for it
//! (one small allocation, no queue; cheaper than a bounded local channel of one).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// The shared slot.
struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The sender is gone (after sending, or dropped without sending).
    closed: bool,
}

/// The sending half; dropping it without [`Sender::send`] makes the receiver yield `None`.
pub struct Sender<T>(Rc<RefCell<Slot<T>>>);

/// The receiving half: a future of the value, `None` when the sender went away without one.
pub struct Receiver<T>(Rc<RefCell<Slot<T>>>);

/// A connected sender and receiver.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Rc::new(RefCell::new(Slot {
        value: None,
        waker: None,
        closed: false,
    }));
    (Sender(slot.clone()), Receiver(slot))
}

impl<T> Sender<T> {
    /// Delivers `value` (dropped if the receiver is gone) and wakes the receiver.
    pub fn send(self, value: T) {
        self.0.borrow_mut().value = Some(value);
        // Drop wakes the receiver.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = self.0.borrow_mut();
            slot.closed = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = self.0.borrow_mut();
        if let Some(v) = slot.value.take() {
            return Poll::Ready(Some(v));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_or_reports_a_dropped_sender() {
        let (tx, rx) = channel();
        tx.send(7);
        assert_eq!(futures_lite::future::block_on(rx), Some(7));
        let (tx, rx) = channel::<u32>();
        drop(tx);
        assert_eq!(futures_lite::future::block_on(rx), None);
    }
}
