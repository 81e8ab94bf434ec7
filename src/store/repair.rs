//! Acting on what `bae verify` found: every damaged copy is replaced from a good one.
//!
//! - a bad local copy of a chunk in the remote is dropped and fetched again on next use;
//! - a bad local copy of a chunk not in the remote is revoked: its pieces are downloaded
//!   again;
//! - a bad or missing remote object is uploaded again (under a new name) from a good
//!   local copy; with no good local copy the chunk's pieces are downloaded again.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::model::{ChunkKey, ChunkState, PieceIndex, TorrentId};

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

impl Store {
    /// Verified pieces whose bytes no chunk hash vouches for: a piece with a chunk that
    /// is not complete yet. Only the torrent's own piece hash can vouch for them after
    /// a restart (the files may have changed while the daemon was stopped). O(pieces)
    /// for an incomplete torrent, nothing for a complete one.
    pub fn pieces_in_partial_chunks(&self, id: TorrentId) -> Vec<PieceIndex> {
        let st = self.lock();
        let Some(t) = st.torrents.get(&id) else {
            return Vec::new();
        };
        let g = t.geometry;
        if t.states.complete() == g.num_chunks() || t.verified.count() == 0 {
            return Vec::new();
        }
        t.verified
            .iter()
            .filter(|&p| {
                g.chunks_of_piece(PieceIndex(p))
                    .any(|c| t.state(c) == ChunkState::Partial)
            })
            .map(PieceIndex)
            .collect()
    }

    /// Forgets that `pieces` (each in a chunk not complete yet) were verified: their
    /// local bytes failed the torrent's hash. libtorrent downloads them again (the
    /// torrent is re-added with the store's have-pieces). Returns how many were revoked.
    pub fn revoke_partial_pieces(&self, id: TorrentId, pieces: &[PieceIndex], why: &str) -> usize {
        let _commit = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (revoked, n_chunks) = {
            let mut st = self.lock();
            let Some(t) = st.torrents.get_mut(&id) else {
                return 0;
            };
            let g = t.geometry;
            let revoked: Vec<u32> = pieces
                .iter()
                .map(|p| p.0)
                .filter(|&p| {
                    t.verified.contains(p)
                        && g.chunks_of_piece(PieceIndex(p))
                            .any(|c| t.state(c) == ChunkState::Partial)
                })
                .collect();
            for &p in &revoked {
                t.verified.remove(p);
                t.durable.remove(p);
            }
            let mut chunks: Vec<u32> = revoked
                .iter()
                .flat_map(|&p| g.chunks_of_piece(PieceIndex(p)))
                .collect();
            chunks.sort_unstable();
            chunks.dedup();
            (revoked, chunks.len() as u64)
        };
        if revoked.is_empty() {
            return 0;
        }
        // Still queued for the committer: it skips pieces no longer verified.
        tracing::warn!(torrent = %id, pieces = revoked.len(), reason = why, "verified pieces in unfinished chunks failed their hash; they are downloaded again");
        self.counters
            .revoked_chunks
            .fetch_add(n_chunks, Ordering::Relaxed);
        if let Err(e) = self.catalog.unverify(id, &revoked, &[]) {
            tracing::error!(torrent = %id, error = %e, "could not record revoked pieces");
        }
        let _ = self.revoked_tx.send(id);
        revoked.len()
    }
}
