//! The background uploader: complete chunks → sealed objects in the remote.
//!
//! Runs as tokio tasks with at most `limit` PUTs in flight, where `limit` follows the
//! remote's measured throughput ([`Controller`]: hill-climbing between 1 and the
//! configured `upload_concurrency`, halved on failures), so that uploads keep up with
//! downloads without flooding a slow remote. Each upload reads
//! the chunk (pinned), re-checks its hash, seals it, PUTs it (the `Remote` retries
//! transient failures with backoff), and only then marks it uploaded. A chunk whose
//! upload keeps failing goes back in the queue after a pause; it is never dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::model::ChunkKey;
use crate::remote::crypto::{self, Key};
use crate::remote::{object_key_for, ObjectStore, Remote, RemoteError};
use crate::store::{Store, UploadPayload};

use super::journal::Journal;

use super::chunk_identity;

/// What `status` shows about uploads.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct UploaderStatus {
    pub uploaded_chunks: u64,
    pub uploaded_bytes: u64,
    pub in_flight: usize,
    pub queued: usize,
    /// Chunks the remote refused (4xx), waiting a long while before the next attempt.
    #[serde(default)]
    pub parked: usize,
    /// The last failure, while uploads are failing.
    pub last_error: Option<String>,
    /// PUTs allowed in flight now (adapts to the remote's throughput).
    #[serde(default)]
    pub concurrency: usize,
}

/// How long the throughput is measured before the concurrency is adjusted.
const WINDOW: Duration = Duration::from_secs(2);
/// A step up must gain this much throughput to be kept.
const GAIN: f64 = 1.05;
/// Windows spent at a level found best before probing above it again.
const HOLD_WINDOWS: u32 = 4;

/// Upload concurrency from measured throughput: each window (when uploads were waiting
/// for a slot, so the concurrency is what limits them) compares the throughput with the
/// previous window's; a step up that gains keeps climbing, one that does not steps back
/// and holds for a while; any failed upload halves the concurrency (multiplicative
/// decrease: the remote is overloaded or failing). Always within `1..=max`.
#[derive(Debug)]
pub(crate) struct Controller {
    max: usize,
    limit: usize,
    window_start: Instant,
    bytes: u64,
    failures: u32,
    saturated: bool,
    /// The level and throughput of the last measured window.
    prev: Option<(usize, f64)>,
    hold: u32,
    /// The next probe after a hold goes down (the last one up found nothing).
    probe_down: bool,
}

impl Controller {
    pub(crate) fn new(max: usize, now: Instant) -> Controller {
        let max = max.max(1);
        Controller {
            max,
            limit: max.div_ceil(2),
            window_start: now,
            bytes: 0,
            failures: 0,
            saturated: false,
            prev: None,
            hold: 0,
            probe_down: false,
        }
    }

    /// A probe found nothing better: back to `level`, hold, probe the other way next.
    fn back_to(&mut self, level: usize, best: f64, probe_down: bool) {
        self.limit = level;
        self.prev = Some((level, best));
        self.hold = HOLD_WINDOWS;
        self.probe_down = probe_down;
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    pub(crate) fn on_success(&mut self, bytes: u64) {
        self.bytes += bytes;
    }

    pub(crate) fn on_failure(&mut self) {
        self.failures += 1;
    }

    /// Work waited for a free slot: the concurrency is the bottleneck.
    pub(crate) fn on_saturated(&mut self) {
        self.saturated = true;
    }

    /// Ends the window when it is due; returns the new limit if it changed.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<usize> {
        let elapsed = now.duration_since(self.window_start);
        if elapsed < WINDOW {
            return None;
        }
        let old = self.limit;
        let thr = self.bytes as f64 / elapsed.as_secs_f64();
        if self.failures > 0 {
            self.limit = (self.limit / 2).max(1);
            self.prev = None;
            self.hold = HOLD_WINDOWS;
        } else if self.saturated {
            match self.prev {
                Some((level, best)) if self.limit > level => {
                    if thr >= best * GAIN {
                        self.prev = Some((self.limit, thr));
                        self.limit = (self.limit + 1).min(self.max);
                    } else {
                        // No gain: the remote was already at its best one step below.
                        self.back_to(level, best, true);
                    }
                }
                Some((level, best)) if self.limit < level => {
                    if thr * GAIN >= best {
                        // As fast with fewer PUTs: keep going down (against the best seen).
                        self.prev = Some((self.limit, best));
                        self.limit = (self.limit - 1).max(1);
                    } else {
                        self.back_to(level, best, false);
                    }
                }
                _ if self.hold > 0 => {
                    self.hold -= 1;
                    self.prev = Some((self.limit, thr));
                }
                _ => {
                    self.prev = Some((self.limit, thr));
                    let down = (self.probe_down || self.limit == self.max) && self.limit > 1;
                    self.limit = if down {
                        self.limit - 1
                    } else {
                        (self.limit + 1).min(self.max)
                    };
                }
            }
        } else {
            // Uploads kept up with what there was to upload: nothing learned.
            self.prev = None;
        }
        self.window_start = now;
        self.bytes = 0;
        self.failures = 0;
        self.saturated = false;
        (self.limit != old).then_some(self.limit)
    }
}

struct Shared {
    store: Arc<Store>,
    remote: Remote,
    key: Arc<Key>,
    uploaded_chunks: AtomicU64,
    uploaded_bytes: AtomicU64,
    in_flight: AtomicUsize,
    last_error: Mutex<Option<String>>,
    idle: tokio::sync::Notify,
    journal: Arc<Journal>,
    /// Failed attempts per chunk since its last success.
    failures: Mutex<HashMap<ChunkKey, u32>>,
    /// Chunks waiting out a refusal by the remote.
    parked: AtomicUsize,
    /// PUTs in flight (a slot is held from the start of an upload until its PUT ends).
    puts: Mutex<usize>,
    slot_free: Notify,
    controller: Mutex<Controller>,
}

/// A PUT slot; frees itself when dropped.
struct Slot<'a>(&'a Shared);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.puts.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.0.slot_free.notify_one();
    }
}

impl Shared {
    fn controller(&self) -> std::sync::MutexGuard<'_, Controller> {
        self.controller.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self) {
        if let Some(limit) = self.controller().tick(Instant::now()) {
            tracing::debug!(limit, "upload concurrency adjusted");
            self.slot_free.notify_one();
        }
    }

    /// Waits for a PUT slot under the current limit.
    async fn slot(&self) {
        let mut waited = false;
        loop {
            let notified = self.slot_free.notified();
            {
                let mut puts = self.puts.lock().unwrap_or_else(|e| e.into_inner());
                if *puts < self.controller().limit() {
                    *puts += 1;
                    return;
                }
            }
            if !waited {
                waited = true;
                self.controller().on_saturated();
            }
            // A window may end while every slot is busy.
            let _ = tokio::time::timeout(WINDOW, notified).await;
            self.tick();
        }
    }
}

pub struct Uploader {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// Pause before a chunk whose upload failed (after the remote's own retries) is tried
/// again.
const REQUEUE_DELAY: Duration = Duration::from_secs(2);
/// Pause before a chunk the remote refused (4xx) is offered again.
const PARKED_DELAY: Duration = Duration::from_secs(15 * 60);

impl Uploader {
    /// Starts uploading on the current tokio runtime.
    pub fn start(
        store: Arc<Store>,
        remote: Remote,
        key: Arc<Key>,
        journal: Arc<Journal>,
        concurrency: usize,
    ) -> Uploader {
        let shared = Arc::new(Shared {
            store,
            remote,
            key,
            journal,
            failures: Mutex::new(HashMap::new()),
            parked: 0.into(),
            puts: Mutex::new(0),
            slot_free: Notify::new(),
            controller: Mutex::new(Controller::new(concurrency, Instant::now())),
            uploaded_chunks: 0.into(),
            uploaded_bytes: 0.into(),
            in_flight: 0.into(),
            last_error: Mutex::new(None),
            idle: tokio::sync::Notify::new(),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let key = s.store.next_upload().await;
                s.slot().await;
                s.in_flight.fetch_add(1, Ordering::SeqCst);
                let s2 = s.clone();
                tokio::spawn(async move {
                    let permit = Slot(&s2);
                    upload_one(&s2, key, permit).await;
                    s2.in_flight.fetch_sub(1, Ordering::SeqCst);
                    s2.idle.notify_waiters();
                });
            }
        });
        Uploader { shared, task }
    }

    pub fn status(&self) -> UploaderStatus {
        let s = &self.shared;
        UploaderStatus {
            uploaded_chunks: s.uploaded_chunks.load(Ordering::Relaxed),
            uploaded_bytes: s.uploaded_bytes.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            queued: s.store.pending_uploads(),
            parked: s.parked.load(Ordering::Relaxed),
            last_error: s
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            concurrency: s.controller().limit(),
        }
    }

    /// Waits until every complete chunk is uploaded, or the timeout passes. Returns
    /// whether everything is safe in the remote.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let s = &self.shared;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = s.idle.notified();
            // In flight too: a chunk's counters are updated just after it is marked.
            if s.store.not_uploaded_chunks() == 0 && s.in_flight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Stops taking new uploads. Uploads in flight are abandoned; their chunks stay
    /// complete (not uploaded) and are uploaded after the next start.
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn upload_one(s: &Shared, key: ChunkKey, permit: Slot<'_>) {
    let result = try_upload(s, key, permit).await;
    match &result {
        Ok(Some(len)) => s.controller().on_success(*len),
        Err(_) => s.controller().on_failure(),
        Ok(None) => {}
    }
    s.tick();
    match result {
        Ok(Some(len)) => {
            s.uploaded_chunks.fetch_add(1, Ordering::Relaxed);
            s.uploaded_bytes.fetch_add(len, Ordering::Relaxed);
            s.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            *s.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        Ok(None) => {
            s.failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        Err(e) => {
            let attempts = {
                let mut f = s.failures.lock().unwrap_or_else(|e| e.into_inner());
                let n = f.entry(key).or_insert(0);
                *n += 1;
                *n
            };
            *s.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            let delay = requeue_delay(&e, attempts);
            if e.permanent {
                s.parked.fetch_add(1, Ordering::Relaxed);
                tracing::error!(chunk = %key, error = %e.message, retry_in_secs = delay.as_secs(), "upload refused by the remote; parked");
            } else {
                tracing::warn!(chunk = %key, error = %e.message, retry_in_secs = delay.as_secs(), "upload failed; will retry");
            }
            tokio::time::sleep(delay).await;
            if e.permanent {
                s.parked.fetch_sub(1, Ordering::Relaxed);
            }
            s.store.requeue_upload(key);
        }
    }
}

/// How long a chunk waits before its next attempt: transient failures (the remote's
/// own retries are spent) back off from seconds to a minute; a refusal (4xx: bad
/// credentials, missing bucket, policy) parks the chunk for long stretches — it stays
/// pinned and visible in `status` until the cause is fixed, without hammering the remote.
fn requeue_delay(e: &UploadFailure, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(6);
    if e.permanent {
        PARKED_DELAY
    } else {
        (REQUEUE_DELAY * 2u32.pow(exp)).min(Duration::from_secs(60))
    }
}

/// Why one upload attempt failed.
#[derive(Debug)]
struct UploadFailure {
    message: String,
    permanent: bool,
}

impl std::fmt::Display for UploadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl UploadFailure {
    fn local(e: impl std::fmt::Display) -> Self {
        UploadFailure {
            message: e.to_string(),
            permanent: false,
        }
    }
}

impl From<RemoteError> for UploadFailure {
    fn from(e: RemoteError) -> Self {
        UploadFailure {
            permanent: matches!(e, RemoteError::Permanent(_)),
            message: e.to_string(),
        }
    }
}

/// Uploads one chunk. `Ok(None)` when it no longer needs uploading.
///
/// `permit` bounds the PUTs in flight; it is released as soon as the object is stored,
/// so waiting for the metadata journal (or a retry delay) never holds up other uploads.
async fn try_upload(
    s: &Shared,
    key: ChunkKey,
    permit: Slot<'_>,
) -> Result<Option<u64>, UploadFailure> {
    let store = s.store.clone();
    let crypto_key = s.key.clone();
    // At a lower CPU priority: an upload can wait for a download (see `background`).
    let sealed = crate::background::run(move || {
        match store.upload_payload(key).map_err(UploadFailure::local)? {
            UploadPayload::Ready(chunk, data) => {
                let object = crypto::seal(&crypto_key, &chunk_identity(&chunk).aad(), &data);
                Ok::<_, UploadFailure>(Some((chunk, object)))
            }
            // A damaged chunk was revoked by the store: it comes back, re-downloaded.
            UploadPayload::Gone | UploadPayload::Damaged => Ok(None),
        }
    })
    .await
    .map_err(UploadFailure::local)??;
    let Some((chunk, object)) = sealed else {
        return Ok(None);
    };
    let name = object_key_for(&chunk.object_id);
    s.remote.put(&name, Bytes::from(object)).await?;
    drop(permit);
    // The chunk counts as uploaded only once the remote's metadata knows it, so that a
    // restore from the remote alone finds it (whatever happens to this machine).
    if !s.journal.record(&chunk).await? {
        let _ = s.remote.delete(&name).await;
        return Ok(None);
    }
    let store = s.store.clone();
    let oid = chunk.object_id.clone();
    let marked = tokio::task::spawn_blocking(move || store.mark_uploaded(key, &oid))
        .await
        .map_err(UploadFailure::local)?
        .map_err(UploadFailure::local)?;
    if !marked {
        // Revoked or removed while in flight: nothing refers to this object.
        let _ = s.remote.delete(&name).await;
        return Ok(None);
    }
    Ok(Some(chunk.len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the controller against a remote whose throughput is `remote(level)` bytes/s,
    /// with uploads always waiting (saturated), for `windows` windows; returns the limits.
    fn drive(max: usize, windows: usize, remote: impl Fn(usize) -> f64) -> Vec<usize> {
        let t0 = Instant::now();
        let mut c = Controller::new(max, t0);
        let mut out = Vec::new();
        for w in 1..=windows {
            c.on_saturated();
            c.on_success((remote(c.limit()) * WINDOW.as_secs_f64()) as u64);
            c.tick(t0 + WINDOW * w as u32);
            out.push(c.limit());
        }
        out
    }

    #[test]
    fn climbs_while_throughput_grows_and_settles_at_the_knee() {
        // The remote scales up to 5 parallel PUTs, then is flat.
        let limits = drive(16, 30, |n| 10e6 * n.min(5) as f64);
        assert!(limits.iter().all(|&l| (1..=16).contains(&l)));
        let tail = &limits[10..];
        assert!(
            tail.iter().all(|&l| (4..=6).contains(&l)),
            "settles at the knee (5), probing one step around it: {limits:?}"
        );
        let at_knee = tail.iter().filter(|&&l| l == 5).count();
        assert!(at_knee * 2 > tail.len(), "{limits:?}");
    }

    #[test]
    fn never_exceeds_the_configured_bound() {
        let limits = drive(4, 20, |n| 10e6 * n as f64);
        assert!(limits.iter().all(|&l| l <= 4));
        let at_max = limits[10..].iter().filter(|&&l| l == 4).count();
        assert!(at_max >= 7, "stays at the bound, probing below: {limits:?}");
        assert_eq!(drive(1, 5, |n| n as f64), vec![1; 5]);
    }

    #[test]
    fn failures_halve_the_concurrency() {
        let t0 = Instant::now();
        let mut c = Controller::new(16, t0);
        assert_eq!(c.limit(), 8);
        c.on_saturated();
        c.on_failure();
        assert_eq!(c.tick(t0 + WINDOW), Some(4));
        c.on_failure();
        c.tick(t0 + WINDOW * 2);
        c.on_failure();
        c.tick(t0 + WINDOW * 3);
        c.on_failure();
        c.tick(t0 + WINDOW * 4);
        assert_eq!(c.limit(), 1, "never below one");
        // Before a window ends nothing changes.
        c.on_failure();
        assert_eq!(c.tick(t0 + WINDOW * 4 + Duration::from_millis(10)), None);
    }

    #[test]
    fn uploads_that_keep_up_teach_nothing() {
        let t0 = Instant::now();
        let mut c = Controller::new(8, t0);
        for w in 1..10u32 {
            c.on_success(1 << 20);
            assert_eq!(c.tick(t0 + WINDOW * w), None, "not saturated: no change");
        }
        assert_eq!(c.limit(), 4);
    }
}
