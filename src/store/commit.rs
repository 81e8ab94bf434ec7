//! Making verified pieces durable.
//!
//! libtorrent reports pieces verified; the store knows at once (readers may use them)
//! and queues them. The committer batches the queue, fsyncs the chunk files the pieces
//! touch, and only then records the pieces — and the chunks they complete, with the
//! chunk's hash and remote name — in one catalog transaction.
//!
//! Invariant: a chunk is recorded complete only when every piece over it is recorded
//! too. Completeness is decided from the pieces already durable plus the batch being
//! committed — never from the in-memory verified set, which runs ahead of the catalog
//! (a piece verified in memory but not yet in any batch would otherwise make its chunk
//! "complete" before its bytes were synced).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use crate::catalog::Completed;
use crate::model::{ChunkIndex, ChunkKey, ChunkState, PieceIndex, TorrentId};

use super::files;
use super::{Store, StoreError};

impl Store {
    /// libtorrent verified these pieces. Updates the in-memory view at once and queues
    /// them for the committer, which makes them durable. Never blocks on I/O.
    /// Pieces known verified already are ignored, so libtorrent may report a piece any
    /// number of times (echoes of the have-pieces it was given, sweeps after alerts
    /// were dropped) at no cost.
    pub fn pieces_verified(&self, id: TorrentId, pieces: &[PieceIndex]) {
        let new: Vec<(TorrentId, u32)> = {
            let mut st = self.lock();
            let Some(t) = st.torrents.get_mut(&id) else {
                return;
            };
            pieces
                .iter()
                .filter(|p| t.verified.insert(p.0))
                .map(|p| (id, p.0))
                .collect()
        };
        if new.is_empty() {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(new);
        self.pending_cv.notify_one();
        self.verified_tx.send_modify(|n| *n += 1);
    }

    /// A piece failed its hash check: forget any in-memory claim about it, and close its
    /// chunks' files kept open for writing, so that its blocks written again go to the
    /// files as they are now (one deleted meanwhile is created afresh).
    pub fn piece_failed(&self, id: TorrentId, piece: PieceIndex) {
        let chunks: Vec<u32> = {
            let st = self.lock();
            let Some(t) = st.torrents.get(&id) else {
                return;
            };
            if t.verified.contains(piece.0) {
                tracing::warn!(torrent = %id, piece = piece.0, "verified piece reported as failed");
            }
            t.geometry.chunks_of_piece(piece).collect()
        };
        for c in chunks {
            self.close_writer(ChunkKey::new(id, c));
        }
    }

    /// Makes every verified piece durable now (shutdown, tests). Returns the number
    /// of chunks that became complete.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let _commit = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let r = self.commit(&batch);
        if r.is_err() {
            // Nothing of a failed batch is lost: it is retried with the next one.
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(batch);
        }
        r
    }

    fn commit(&self, batch: &[(TorrentId, u32)]) -> Result<usize, StoreError> {
        let mut by_torrent: HashMap<TorrentId, Vec<u32>> = HashMap::new();
        for &(t, p) in batch {
            by_torrent.entry(t).or_default().push(p);
        }
        let mut completed_total = 0;
        for (id, mut pieces) in by_torrent {
            pieces.sort_unstable();
            pieces.dedup();
            // Which chunks hold these pieces, and which of them are now complete.
            let (uid, touched, now_complete) = {
                let st = self.lock();
                let Some(t) = st.torrents.get(&id) else {
                    continue;
                };
                // A piece revoked since it was verified is not recorded.
                pieces.retain(|&p| t.verified.contains(p));
                let in_batch: HashSet<u32> = pieces.iter().copied().collect();
                let mut touched: Vec<u32> = pieces
                    .iter()
                    .flat_map(|&p| t.geometry.chunks_of_piece(PieceIndex(p)))
                    .collect();
                touched.sort_unstable();
                touched.dedup();
                let now_complete: Vec<(u32, u64)> = touched
                    .iter()
                    .filter(|&&c| {
                        t.state(c) == ChunkState::Partial
                            && t.geometry
                                .pieces_of_chunk(ChunkIndex(c))
                                .all(|p| t.durable.contains(p) || in_batch.contains(&p))
                    })
                    .map(|&c| (c, t.chunk_len(c)))
                    .collect();
                (t.uid, touched, now_complete)
            };
            if pieces.is_empty() {
                continue;
            }
            // A verified piece may cover chunks that never received a byte (all pad
            // zeros). They get an (empty, sparse) file so that every verified byte is
            // local or uploaded — the invariant recovery checks after a restart.
            for &c in &touched {
                let key = ChunkKey::new(id, c);
                let needs_file = {
                    let st = self.lock();
                    !st.present(key) && st.state(key) == Some(ChunkState::Partial)
                };
                if needs_file {
                    let path = self.chunk_file(&uid, ChunkIndex(c));
                    files::write_at(&path, 0, &[]).map_err(|e| StoreError::io(&path, e))?;
                    self.lock().set_present(key, true);
                }
            }
            for &c in &touched {
                let path = self.chunk_file(&uid, ChunkIndex(c));
                files::sync(&path).map_err(|e| StoreError::io(&path, e))?;
            }
            let mut completed = Vec::with_capacity(now_complete.len());
            let mut stamps = Vec::with_capacity(now_complete.len());
            for (c, len) in now_complete {
                let path = self.chunk_file(&uid, ChunkIndex(c));
                let (file, stamp) =
                    files::open_stamped(&path).map_err(|e| StoreError::io(&path, e))?;
                let mut data = vec![0u8; len as usize];
                files::read_file_at(&file, 0, &mut data).map_err(|e| StoreError::io(&path, e))?;
                completed.push(Completed {
                    index: c,
                    len,
                    hash: *blake3::hash(&data).as_bytes(),
                    object_id: crate::remote::new_object_id(),
                });
                stamps.push(stamp);
            }
            self.catalog.commit_verified(id, &pieces, &completed)?;
            let mut st = self.lock();
            if let Some(t) = st.torrents.get_mut(&id) {
                for &p in &pieces {
                    t.durable.insert(p);
                }
            }
            let mut queue = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
            for (c, stamp) in completed.iter().zip(stamps) {
                let key = ChunkKey::new(id, c.index);
                st.set_complete(key, c.hash, c.object_id.clone());
                // Hashed from the file just now: that is its check.
                st.set_checked(key, Some(stamp));
                queue.push_back(key);
            }
            completed_total += completed.len();
        }
        if completed_total > 0 {
            self.upload_notify.notify_one();
        }
        Ok(completed_total)
    }
}

/// Batches verified pieces: wakes on new work, waits a moment for more, then commits
/// them with one fsync per touched chunk file and one transaction.
pub(super) fn committer(store: Weak<Store>) {
    const BATCH_WINDOW: Duration = Duration::from_millis(20);
    loop {
        let Some(s) = store.upgrade() else {
            return;
        };
        {
            let pending = s.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.is_empty() && !s.shutdown.load(Ordering::SeqCst) {
                // Bounded wait so a dropped store is noticed.
                let _ = s
                    .pending_cv
                    .wait_timeout(pending, Duration::from_millis(200));
            }
        }
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let has_work = !s
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if has_work {
            std::thread::sleep(BATCH_WINDOW);
            if let Err(e) = s.flush() {
                tracing::error!(error = %e, "could not record verified pieces; will retry");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
