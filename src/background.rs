//! Work that can wait: sealing uploads and writing them to a local-directory remote run
//! on a few threads at a lower CPU priority (nice [`NICE`]), so that when the CPU is
//! short — a download at full speed shares two cores with its SHA-1 checks and, on a
//! LAN, the peer it comes from — downloads, reads and peers get it first, and uploads
//! catch up as soon as it is free. A job only waits longer: nothing is dropped, and the
//! cache's bound still holds back downloads while uploads lag. Where the priority cannot
//! be lowered, the threads run at the daemon's own.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

/// Threads: uploads in flight each hold one for a write and its fsync.
const THREADS: usize = 4;
/// The nice value of the threads: a tenth of the CPU share of normal ones when both want
/// it (the kernel's weights), all of it when nothing else does.
pub const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error)]
pub enum BackgroundError {
    #[error("background job panicked")]
    Panicked,
    #[error("background threads could not be started")]
    NoThreads,
}

/// Runs `f` on a background thread and returns its result (on the runtime's blocking
/// threads, at their priority, if no background thread could be started).
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackgroundError> {
    let Some(queue) = queue() else {
        return tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| BackgroundError::Panicked);
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    if queue
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .is_err()
    {
        // Every thread is gone (they only end with the queue): nothing to run it.
        return Err(BackgroundError::NoThreads);
    }
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) | Err(_) => Err(BackgroundError::Panicked),
    }
}

/// The pool's queue, its threads started at first use; `None` if none could start.
fn queue() -> Option<&'static Mutex<mpsc::Sender<Job>>> {
    static QUEUE: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            let started = (0..THREADS)
                .filter(|_| {
                    let rx = Arc::clone(&rx);
                    std::thread::Builder::new()
                        .name("bae-background".into())
                        .spawn(move || work(&rx))
                        .is_ok()
                })
                .count();
            if started == 0 {
                tracing::error!("no background thread could be started");
                return None;
            }
            Some(Mutex::new(tx))
        })
        .as_ref()
}

fn work(rx: &Mutex<mpsc::Receiver<Job>>) {
    lower_priority();
    loop {
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Lowers the calling thread's CPU priority by [`NICE`] (Linux: the nice value is per
/// thread; a new thread starts with its creator's).
fn lower_priority() {
    let target = (current_nice() + NICE).min(19);
    // SAFETY: gettid and setpriority have no memory effects; a failure leaves the
    // thread at its priority, which is only slower for others, never wrong.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, target) };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "background threads keep the daemon's priority");
    }
}

/// The calling thread's nice value.
fn current_nice() -> i32 {
    // SAFETY: no memory effects. -1 is also the error return; an error (impossible for
    // the calling thread) would only make the target one step higher.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_at_lower_priority_and_a_panic_is_an_error() {
        let own = current_nice();
        let (nice, name) = run(|| {
            (
                current_nice(),
                std::thread::current().name().map(str::to_owned),
            )
        })
        .await
        .unwrap();
        assert_eq!(name.as_deref(), Some("bae-background"));
        assert_eq!(nice, (own + NICE).min(19));
        assert_eq!(current_nice(), own, "the caller's priority is untouched");
        let r = run(|| -> u32 { panic!("boom") }).await;
        assert!(matches!(r, Err(BackgroundError::Panicked)), "{r:?}");
        // The pool goes on after a panic: all its threads still take jobs.
        let all = futures::future::join_all((0..2 * THREADS as u32).map(|i| run(move || i * 2)));
        let got: Vec<u32> = all.await.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            got,
            (0..2 * THREADS as u32).map(|i| i * 2).collect::<Vec<_>>()
        );
    }
}
