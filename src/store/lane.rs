//! Blocking jobs run ahead of readers (hashing a chunk, reading chunks into memory):
//! in the order asked, so the chunks nearest the reader come first, and at most a few
//! at once, on tokio's blocking pool. A thread that finishes a job takes the next one
//! waiting instead of handing it to another thread.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

pub(super) struct Lane {
    limit: usize,
    state: Mutex<State>,
}

struct State {
    waiting: VecDeque<Job>,
    running: usize,
}

impl Lane {
    pub(super) fn new(limit: usize) -> Arc<Lane> {
        Arc::new(Lane {
            limit: limit.max(1),
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                running: 0,
            }),
        })
    }

    /// Queues `job`, and starts a thread for the lane if fewer than its limit run.
    pub(super) fn push(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        job: impl FnOnce() + Send + 'static,
    ) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.waiting.push_back(Box::new(job));
        if st.running < self.limit {
            st.running += 1;
            drop(st);
            let lane = Arc::clone(self);
            rt.spawn_blocking(move || lane.drain());
        }
    }

    fn drain(&self) {
        loop {
            let job = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                match st.waiting.pop_front() {
                    Some(job) => job,
                    None => {
                        st.running -= 1;
                        return;
                    }
                }
            };
            // A job that panics must not take the lane's thread (and its place) along.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                tracing::error!("a job ahead of a reader panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn jobs_start_in_the_order_queued_and_never_more_than_the_limit_at_once() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let lane = Lane::new(2);
        let started = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..12 {
            let (started, running, most, tx) = (
                Arc::clone(&started),
                Arc::clone(&running),
                Arc::clone(&most),
                tx.clone(),
            );
            lane.push(rt.handle(), move || {
                use std::sync::atomic::Ordering::SeqCst;
                let now = running.fetch_add(1, SeqCst) + 1;
                most.fetch_max(now, SeqCst);
                started.lock().unwrap().push(i);
                std::thread::sleep(Duration::from_millis(5));
                running.fetch_sub(1, SeqCst);
                if i == 3 {
                    panic!("a job that fails");
                }
                tx.send(i).unwrap();
            });
        }
        let mut done: Vec<i32> = (0..11)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        done.sort();
        assert_eq!(done, (0..12).filter(|&i| i != 3).collect::<Vec<_>>());
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 2);
        // With two at a time, no job starts before one queued two places earlier.
        let started = started.lock().unwrap().clone();
        for (at, &i) in started.iter().enumerate() {
            assert!(i as usize + 1 >= at, "job {i} started {at}th: {started:?}");
            assert!(at + 1 >= i as usize, "job {i} started {at}th: {started:?}");
        }
        // The lane still runs after a job panicked.
        let (tx, rx) = std::sync::mpsc::channel();
        lane.push(rt.handle(), move || tx.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}
