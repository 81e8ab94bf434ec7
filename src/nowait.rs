//! One poll of a future on a thread that must not block (the FUSE dispatch thread): a
//! read whose bytes are at hand is answered there, without the hand-off to a worker
//! and back, which costs more than a 4 KiB read itself.
//!
//! Code that would block — a disk read of pages not in the page cache, hashing a chunk
//! — asks [`active`] and, under such a poll, yields once instead ([`yield_once`]); the
//! caller then moves the future to a worker, whose next poll goes on and blocks there.
//! The flag is per thread and set only for the duration of one [`poll_once`].

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Polls `f` once, with a waker that does nothing: a `Pending` result must be polled
/// again by whoever takes the future over (a spawned task registers its own waker).
pub fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    let _reset = Reset(ACTIVE.with(|a| a.replace(true)));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    f.poll(&mut cx)
}

/// Whether the current poll must not block.
pub fn active() -> bool {
    ACTIVE.with(Cell::get)
}

/// Returns `Pending` once under [`poll_once`], and is ready at once otherwise (or on
/// the next poll).
pub async fn yield_once() {
    if !active() {
        return;
    }
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(blocking_steps: &std::sync::Mutex<Vec<bool>>) -> u32 {
        blocking_steps.lock().unwrap().push(active());
        yield_once().await;
        blocking_steps.lock().unwrap().push(active());
        7
    }

    #[test]
    fn a_poll_that_must_not_block_yields_where_it_would_and_the_next_poll_goes_on() {
        let steps = std::sync::Mutex::new(Vec::new());
        let mut f = Box::pin(read(&steps));
        assert!(poll_once(f.as_mut()).is_pending());
        assert!(!active(), "the flag is only set during poll_once");
        // Taken over elsewhere (here: polled to the end): the rest runs, blocking allowed.
        assert_eq!(futures::executor::block_on(f), 7);
        assert_eq!(*steps.lock().unwrap(), vec![true, false]);
    }

    #[test]
    fn outside_poll_once_nothing_yields() {
        let steps = std::sync::Mutex::new(Vec::new());
        assert_eq!(futures::executor::block_on(read(&steps)), 7);
        assert_eq!(*steps.lock().unwrap(), vec![false, false]);
    }
}
