//! The background uploader: complete chunks → sealed objects in the remote.
//!
//! Runs as tokio tasks with at most `concurrency` uploads in flight. Each upload reads
//! the chunk (pinned), re-checks its hash, seals it, PUTs it (the `Remote` retries
//! transient failures with backoff), and only then marks it uploaded. A chunk whose
//! upload keeps failing goes back in the queue after a pause; it is never dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::model::ChunkKey;
use crate::remote::crypto::{self, Key};
use crate::remote::{object_key_for, ObjectStore, Remote};
use crate::store::Store;

use super::chunk_identity;

/// What `status` shows about uploads.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct UploaderStatus {
    pub uploaded_chunks: u64,
    pub uploaded_bytes: u64,
    pub in_flight: usize,
    pub queued: usize,
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
}

pub struct Uploader {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// Pause before a chunk whose upload failed (after the remote's own retries) is tried
/// again.
const REQUEUE_DELAY: Duration = Duration::from_secs(2);

impl Uploader {
    /// Starts uploading on the current tokio runtime.
    pub fn start(store: Arc<Store>, remote: Remote, key: Arc<Key>, concurrency: usize) -> Uploader {
        let shared = Arc::new(Shared {
            store,
            remote,
            key,
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
                    upload_one(&s2, key).await;
                    drop(permit);
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
            if s.store.not_uploaded_chunks() == 0 {
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

async fn upload_one(s: &Shared, key: ChunkKey) {
    match try_upload(s, key).await {
        Ok(Some(len)) => {
            s.uploaded_chunks.fetch_add(1, Ordering::Relaxed);
            s.uploaded_bytes.fetch_add(len, Ordering::Relaxed);
            *s.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(chunk = %key, error = %e, "upload failed; will retry");
            *s.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
            tokio::time::sleep(REQUEUE_DELAY).await;
            s.store.requeue_upload(key);
        }
    }
}

/// Uploads one chunk. `Ok(None)` when it no longer needs uploading.
async fn try_upload(s: &Shared, key: ChunkKey) -> Result<Option<u64>, String> {
    let store = s.store.clone();
    let crypto_key = s.key.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        let Some((chunk, data)) = store.upload_payload(key).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let object = crypto::seal(&crypto_key, &chunk_identity(&chunk).aad(), &data);
        Ok::<_, String>(Some((chunk, object)))
    })
    .await
    .map_err(|e| e.to_string())??;
    let Some((chunk, object)) = sealed else {
        return Ok(None);
    };
    s.remote
        .put(&object_key_for(&chunk.object_id), Bytes::from(object))
        .await
        .map_err(|e| e.to_string())?;
    let store = s.store.clone();
    tokio::task::spawn_blocking(move || store.mark_uploaded(key))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(Some(chunk.len))
}
