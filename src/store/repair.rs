//! Acting on what `bae verify` found: every damaged copy is replaced from a good one.
//!
//! - a bad local copy of a chunk in the remote is dropped and fetched again on next use;
//! - a bad local copy of a chunk not in the remote is revoked: its pieces are downloaded
//!   again;
//! - a bad or missing remote object is uploaded again (under a new name) from a good
//!   local copy; with no good local copy the chunk's pieces are downloaded again.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::model::{ChunkKey, ChunkState, TorrentId};

use super::Store;

/// What a repair set in motion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RepairSummary {
    /// Local copies dropped; fetched again from the remote when next used.
    pub refetch: u32,
    /// Chunks whose pieces are downloaded again.
    pub redownload: u32,
    /// Chunks uploaded again from their local copy.
    pub reupload: u32,
}

impl Store {
    /// Repairs torrent `id`'s chunks: `bad_local` have damaged local copies,
    /// `bad_remote` have damaged or missing remote objects.
    pub fn repair(
        self: &Arc<Self>,
        id: TorrentId,
        bad_local: &[u32],
        bad_remote: &[u32],
    ) -> RepairSummary {
        let mut summary = RepairSummary::default();
        for &c in bad_local {
            let key = ChunkKey::new(id, c);
            if bad_remote.contains(&c) {
                continue;
            }
            if self.chunk_damaged(key, "bae verify found the local copy damaged") {
                summary.refetch += 1;
            } else {
                summary.redownload += 1;
            }
        }
        for &c in bad_remote {
            let key = ChunkKey::new(id, c);
            let local_good =
                !bad_local.contains(&c) && matches!(self.check_local(key), Ok(Some(true)));
            if local_good && self.reupload(key) {
                summary.reupload += 1;
            } else {
                self.forget_remote(key);
                summary.redownload += 1;
            }
        }
        summary
    }

    /// An uploaded chunk whose object is bad, with a good local copy: it is complete
    /// again under a new object name and queued for upload (pinned until then).
    fn reupload(&self, key: ChunkKey) -> bool {
        let oid = crate::remote::new_object_id();
        let _commit = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let hash = {
            let st = self.lock();
            match st.entry(key) {
                Some(c) if c.present && c.state == ChunkState::Uploaded => c.hash,
                _ => None,
            }
        };
        let Some(hash) = hash else {
            return false;
        };
        self.remote_epoch.fetch_add(1, Ordering::SeqCst);
        match self.catalog.reupload_chunk(key, &oid) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::error!(chunk = %key, error = %e, "could not record the re-upload");
                return false;
            }
        }
        self.lock().set_complete(key, hash, oid);
        self.requeue_upload(key);
        true
    }

    /// An uploaded chunk whose object is bad and with no good local copy: its bytes
    /// exist nowhere, so its pieces are revoked and downloaded again.
    fn forget_remote(&self, key: ChunkKey) {
        {
            let _commit = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.remote_epoch.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = self.catalog.forget_uploaded_chunk(key) {
                tracing::error!(chunk = %key, error = %e, "could not forget the chunk's object");
                return;
            }
            let mut st = self.lock();
            if st
                .entry(key)
                .is_some_and(|c| c.state == ChunkState::Uploaded)
            {
                st.set_state(key, ChunkState::Complete);
            }
            if !st.entry(key).is_some_and(|c| c.present) {
                // chunk_damaged only acts on a local copy: give it a (wrong) one to drop.
                st.set_present(key, true);
            }
        }
        self.chunk_damaged(key, "its remote object is bad and no good copy is local");
    }
}
