//! Begun chunks first: the pieces that complete a chunk already begun are raised above
//! the rest of a download.
//!
//! Only a complete chunk can be uploaded, and only an uploaded one evicted. libtorrent
//! picks pieces rarest first, in random order among equals; its 4 MiB extent affinity,
//! which would keep a chunk's pieces together, is off whenever a reader has set a piece
//! deadline. With pieces smaller than a chunk that leaves most chunks begun and none
//! complete, so a cache that fills mid-download has nothing it may let go of, and the
//! download crawls (it was 11 KB/s in the chaos suite's full-disk case). Raised pieces
//! keep the begun chunks few: each one is finished before many more are begun.
//!
//! Memory: a bit per piece of each torrent being downloaded, dropped when it finishes
//! or leaves the session.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::{BitSet, PieceIndex, TorrentId};
use crate::store::Store;
use crate::torrent::Session;

/// libtorrent piece priority of a piece that completes a begun chunk: above the
/// default (4), below the top (7) that piece deadlines (readers) use.
pub const BEGUN_CHUNK_PRIORITY: u8 = 6;

/// Which pieces were raised already, per torrent: each is raised once.
#[derive(Debug, Default)]
pub struct ChunkOrder {
    raised: Mutex<HashMap<TorrentId, BitSet>>,
}

impl ChunkOrder {
    /// After `piece` of `t` verified: raises the rest of the chunks it lies in.
    pub fn piece_finished(
        &self,
        store: &Store,
        session: &Session,
        t: TorrentId,
        piece: PieceIndex,
    ) {
        let rest = store.rest_of_begun_chunks(t, Some(piece));
        self.raise(store, session, t, &rest);
    }

    /// After `t` was added to the session: raises the rest of every begun chunk (the
    /// session starts with default priorities).
    pub fn torrent_added(&self, store: &Store, session: &Session, t: TorrentId) {
        self.forget(t);
        // Downloading: here from the start, so that a reader's claims are kept.
        if let Some(g) = store.geometry(t).filter(|_| !store.is_complete(t)) {
            self.lock().insert(t, BitSet::empty(g.num_pieces()));
        }
        let rest = store.rest_of_begun_chunks(t, None);
        self.raise(store, session, t, &rest);
    }

    /// `pieces` of `t` were raised to the top priority for a reader: the chunk order
    /// leaves them there (its priority is lower). Nothing for a torrent not downloading.
    pub fn claim(&self, t: TorrentId, pieces: &[PieceIndex]) {
        if let Some(set) = self.lock().get_mut(&t) {
            for p in pieces {
                set.insert(p.0);
            }
        }
    }

    /// `t` finished or left the session.
    pub fn forget(&self, t: TorrentId) {
        self.lock().remove(&t);
    }

    fn raise(&self, store: &Store, session: &Session, t: TorrentId, pieces: &[PieceIndex]) {
        if pieces.is_empty() {
            return;
        }
        let Some(g) = store.geometry(t) else { return };
        let fresh = self.fresh(t, g.num_pieces(), pieces);
        for p in fresh {
            if let Err(e) = session.set_piece_priority(t, p, BEGUN_CHUNK_PRIORITY) {
                // Gone from the session: nothing to order any more.
                tracing::debug!(torrent = %t, piece = p.0, error = %e, "cannot raise a piece");
                self.forget(t);
                return;
            }
        }
    }

    /// The pieces of `pieces` not raised (or claimed) before, now marked raised.
    fn fresh(&self, t: TorrentId, num_pieces: u32, pieces: &[PieceIndex]) -> Vec<PieceIndex> {
        let mut raised = self.lock();
        let set = raised.entry(t).or_insert_with(|| BitSet::empty(num_pieces));
        pieces.iter().copied().filter(|p| set.insert(p.0)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TorrentId, BitSet>> {
        self.raised.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_a_reader_claimed_are_not_lowered() {
        let o = ChunkOrder::default();
        let t = TorrentId(1);
        let p = |v: &[u32]| v.iter().map(|&i| PieceIndex(i)).collect::<Vec<_>>();
        // Not in the session's order yet: nothing to remember.
        o.claim(t, &p(&[1]));
        assert_eq!(o.fresh(t, 8, &p(&[1, 2])), p(&[1, 2]));
        // Each piece is raised once.
        assert_eq!(o.fresh(t, 8, &p(&[2, 3])), p(&[3]));
        // A reader's top priority is left alone.
        o.claim(t, &p(&[5, 6]));
        assert_eq!(o.fresh(t, 8, &p(&[4, 5, 6, 7])), p(&[4, 7]));
        // A torrent added afresh starts over.
        o.forget(t);
        assert_eq!(o.fresh(t, 8, &p(&[5])), p(&[5]));
    }
}
