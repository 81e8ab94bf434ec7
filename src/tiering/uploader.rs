//! The background uploader: complete chunks → sealed objects in the remote.
//!
//! Runs as tokio tasks with at most `concurrency` uploads in flight. Each upload reads
//! the chunk (pinned), re-checks its hash, seals it, PUTs it (the `Remote` retries
//! transient failures with backoff), and only then marks it uploaded. A chunk whose
//! upload keeps failing goes back in the queue after a pause; it is never dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
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
            uploaded_chunks: 0.into(),
            uploaded_bytes: 0.into(),
            in_flight: 0.into(),
            last_error: Mutex::new(None),
            idle: tokio::sync::Notify::new(),
        });
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let key = s.store.next_upload().await;
                s.in_flight.fetch_add(1, Ordering::SeqCst);
                let s2 = s.clone();
                tokio::spawn(async move {
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

async fn upload_one(s: &Shared, key: ChunkKey, permit: tokio::sync::OwnedSemaphorePermit) {
    match try_upload(s, key, permit).await {
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
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<Option<u64>, UploadFailure> {
    let store = s.store.clone();
    let crypto_key = s.key.clone();
    let sealed = tokio::task::spawn_blocking(move || {
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
