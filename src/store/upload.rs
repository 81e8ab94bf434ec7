//! The upload queue: complete chunks waiting to be sealed and stored in the remote.
//!
//! A chunk enters the queue when the committer records it complete (or at start-up),
//! leaves it when the uploader takes it, and comes back after a failed attempt. The
//! payload handed to the uploader is the file its last check vouches for (the same
//! stamp before and after the read: the committer hashed it from the file moments
//! before), or else is hashed again: a local copy that changed since it was verified is
//! never uploaded — the chunk is damaged instead.
//! A chunk becomes `Uploaded` (and evictable) only through [`Store::mark_uploaded`], which
//! the uploader calls after the remote confirmed the object (and its metadata).

use std::sync::Arc;

use crate::model::{ChunkKey, ChunkState};

use super::files;
use super::{PinGuard, RemoteChunk, Store, StoreError};

/// What the uploader gets for a queued chunk.
pub enum UploadPayload {
    /// The chunk's identity and verified plaintext.
    Ready(RemoteChunk, Vec<u8>),
    /// Nothing to upload any more (removed, revoked, or uploaded already).
    Gone,
    /// The local copy no longer matches its hash; the chunk was revoked and its pieces
    /// are downloaded again.
    Damaged,
}

impl Store {
    /// Waits until a chunk may need uploading, then returns the next one.
    pub async fn next_upload(&self) -> ChunkKey {
        loop {
            let notified = self.upload_notify.notified();
            if let Some(k) = self
                .uploads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            {
                return k;
            }
            notified.await;
        }
    }

    /// Puts a chunk back in the upload queue (after a failed attempt).
    pub fn requeue_upload(&self, key: ChunkKey) {
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(key);
        self.upload_notify.notify_one();
    }

    /// Chunks that are complete but not yet safe in the remote (queued or in flight).
    pub fn not_uploaded_chunks(&self) -> usize {
        self.lock().not_uploaded_chunks()
    }

    /// Number of complete chunks waiting for upload.
    pub fn pending_uploads(&self) -> usize {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The plaintext and identity of a complete chunk, for the uploader. Blocking.
    pub fn upload_payload(self: &Arc<Self>, key: ChunkKey) -> Result<UploadPayload, StoreError> {
        let (chunk, checked, path, _pin) = {
            let mut st = self.lock();
            let Some(t) = st.torrents.get(&key.torrent) else {
                return Ok(UploadPayload::Gone);
            };
            let uid = t.uid;
            let Some(c) = st.entry(key) else {
                return Ok(UploadPayload::Gone);
            };
            let (ChunkState::Complete, Some(hash), Some(oid)) =
                (c.state, c.hash, st.object_id(key))
            else {
                return Ok(UploadPayload::Gone);
            };
            let chunk = RemoteChunk {
                key,
                torrent_uid: uid,
                len: c.len,
                hash,
                object_id: oid.to_owned(),
            };
            st.pin(key);
            let pin = PinGuard {
                store: Arc::clone(self),
                key,
            };
            (chunk, c.checked, self.chunk_file(&uid, key.index), pin)
        };
        let data = match files::open_stamped(&path) {
            Ok((file, stamp)) => {
                let mut data = vec![0u8; chunk.len as usize];
                files::read_file_at(&file, 0, &mut data).map_err(|e| StoreError::io(&path, e))?;
                let steady = file
                    .metadata()
                    .is_ok_and(|m| files::FileStamp::of(&m) == stamp);
                Some((data, steady.then_some(stamp)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        match data {
            Some((data, steady)) if steady.is_some() && steady == checked => {
                Ok(UploadPayload::Ready(chunk, data))
            }
            Some((data, steady)) if *blake3::hash(&data).as_bytes() == chunk.hash => {
                if let Some(stamp) = steady {
                    self.mark_checked(key, chunk.hash, stamp);
                }
                Ok(UploadPayload::Ready(chunk, data))
            }
            _ => {
                drop(_pin);
                // The local copy changed after it was verified (disk fault, meddling).
                self.chunk_damaged(key, "chunk file changed before its upload");
                Ok(UploadPayload::Damaged)
            }
        }
    }

    /// Records a successful upload of `object_id` for `key`: durable in the catalog
    /// first, then evictable. Returns false (and records nothing) when the chunk no
    /// longer waits for that object — removed or revoked meanwhile: the caller may
    /// delete the object, nothing refers to it.
    pub fn mark_uploaded(&self, key: ChunkKey, object_id: &str) -> Result<bool, StoreError> {
        let is_it = |st: &super::CacheState| {
            st.state(key) == Some(ChunkState::Complete) && st.object_id(key) == Some(object_id)
        };
        let wanted = is_it(&self.lock());
        if !wanted || !self.catalog.mark_uploaded(key, object_id)? {
            return Ok(false);
        }
        {
            let mut st = self.lock();
            if is_it(&st) {
                st.set_state(key, ChunkState::Uploaded);
            }
        }
        self.evict_to_limit();
        Ok(true)
    }
}
