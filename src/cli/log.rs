//! Where `tracing` output goes: standard error, through a queue that can never hurt the
//! process.
//!
//! A daemon thread that logs must not block on a slow or stuck stderr (a pipe nobody
//! reads, a hung disk) nor panic on a failing one (`/dev/full`, `$BAE_HOME` on a full
//! filesystem: tracing-subscriber's own error report is an `eprintln!`, which panics).
//! So each formatted line is handed to a bounded queue without waiting, and one writer
//! thread copies lines to stderr. A line that does not fit in the queue, or that stderr
//! refuses, is dropped and counted; the count is reported in the next line that gets
//! through. [`flush`] lets the process wait, briefly, for queued lines before it exits.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Lines that may wait for the writer thread; more are dropped.
const QUEUE_LINES: usize = 4096;

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line queued before it was written (or dropped).
    Flush(mpsc::Sender<()>),
}

/// The [`MakeWriter`] given to tracing-subscriber: one [`Line`] per event.
#[derive(Clone)]
pub struct Sink {
    tx: SyncSender<Msg>,
    /// Lines lost (queue full, or stderr refused them) and not yet reported.
    dropped: Arc<AtomicU64>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// The process's sink; its writer thread starts on first use.
pub fn sink() -> Sink {
    SINK.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = Arc::clone(&dropped);
        // Without the thread the queue fills and every further line is dropped: logging
        // is lost, nothing else.
        let _ = std::thread::Builder::new()
            .name("bae-log".into())
            .spawn(move || write_lines(rx, &d));
        Sink { tx, dropped }
    })
    .clone()
}

fn write_lines(rx: Receiver<Msg>, dropped: &AtomicU64) {
    let mut stderr = std::io::stderr();
    for msg in rx {
        match msg {
            Msg::Line(line) => {
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    let note = format!(
                        "bae: {lost} log lines were lost (stderr full, failing or too slow)\n"
                    );
                    if stderr.write_all(note.as_bytes()).is_err() {
                        dropped.fetch_add(lost, Ordering::Relaxed);
                    }
                }
                // A bar on screen steps aside for the line and is drawn again below it.
                if super::progress::suspend(|| stderr.write_all(&line)).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Msg::Flush(done) => {
                let _ = stderr.flush();
                let _ = done.send(());
            }
        }
    }
}

/// Waits up to `timeout` for the lines queued so far to be written.
pub fn flush(timeout: Duration) {
    let Some(sink) = SINK.get() else { return };
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    let mut msg = Msg::Flush(tx);
    loop {
        match sink.tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

/// One event's formatted bytes, queued when tracing-subscriber drops it.
pub struct Line<'a> {
    buf: Vec<u8>,
    sink: &'a Sink,
}

impl Write for Line<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        if self.sink.tx.try_send(Msg::Line(line)).is_err() {
            self.sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            buf: Vec::new(),
            sink: self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_lines_instead_of_blocking() {
        // No writer thread: the queue is all there is.
        let (tx, rx) = mpsc::sync_channel(2);
        let sink = Sink {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        for i in 0..5 {
            let mut line = sink.make_writer();
            write!(line, "line {i}").unwrap();
        }
        assert_eq!(sink.dropped.load(Ordering::Relaxed), 3);
        let first = match rx.try_recv().unwrap() {
            Msg::Line(l) => l,
            Msg::Flush(_) => panic!("a flush was never sent"),
        };
        assert_eq!(first, b"line 0");
    }
}
