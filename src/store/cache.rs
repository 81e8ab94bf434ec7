//! In-memory bookkeeping of the chunk cache: which chunks are present locally, what
//! they cost, which are pinned, and the LRU order of the evictable ones.
//!
//! Pure logic, no I/O, so eviction order, pins and size accounting are unit tested.
//! Memory grows with the cache and the active torrents, not with the library: per
//! torrent, two bits per chunk (none when all chunks share a state) and a bit per
//! piece; per *local* chunk (present, or complete and waiting for upload) an entry with
//! its hash and object name. An uploaded chunk that is not local is only its state bits
//! here; its identity is read from the catalog when it is fetched.
//!
//! Invariants:
//! - `used_bytes` is the sum of `len` over present chunks; `evictable_bytes` over the
//!   chunks in `lru`; `unsafe_bytes` over present chunks not yet uploaded;
//!   `pinned_bytes` over present uploaded chunks of pinned torrents. All are kept as
//!   chunks change, so [`CacheState::stats`] never walks anything.
//! - A chunk is in `lru` iff it is present, uploaded, not pinned by its torrent and has
//!   no read pins. Only chunks in `lru` are ever evicted, so a chunk that is not yet
//!   safe in the remote never leaves the cache.
//! - A torrent's `local` map holds exactly its chunks that are present or complete.

use std::collections::HashMap;
use std::ops::Range;

use lru::LruCache;

use crate::model::{
    BitSet, ChunkIndex, ChunkKey, ChunkState, ChunkStates, Geometry, PieceIndex, TorrentId,
};

pub use super::files::FileStamp;

/// What is known about a local chunk beyond its state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalChunk {
    pub present: bool,
    pub hash: Option<[u8; 32]>,
    pub object_id: Option<String>,
    /// The local file as it was when last checked against `hash` (since it was written,
    /// fetched or loaded at start-up). A read of a complete chunk whose file no longer
    /// has this stamp (never checked, or changed since) hashes it again first.
    pub checked: Option<FileStamp>,
}

/// A snapshot of one chunk, as the rest of the store asks about it (a copy, no
/// allocation: reads take one per chunk). `hash` is `None` for an uploaded chunk that is
/// not local (see the module comment): it is in the catalog, with the object name;
/// [`CacheState::object_id`] gives a local chunk's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub len: u64,
    pub state: ChunkState,
    pub present: bool,
    pub hash: Option<[u8; 32]>,
    pub checked: Option<FileStamp>,
}

/// A torrent's local chunks: nothing at all (not even an empty map's 48 bytes) when it
/// has none, as most torrents of a library larger than the cache have not.
// Boxed on purpose: `None` is 8 bytes where an empty map is 48.
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
pub struct LocalChunks(Option<Box<HashMap<u32, LocalChunk>>>);

impl LocalChunks {
    pub fn get(&self, c: &u32) -> Option<&LocalChunk> {
        self.0.as_ref()?.get(c)
    }

    pub fn get_mut(&mut self, c: &u32) -> Option<&mut LocalChunk> {
        self.0.as_mut()?.get_mut(c)
    }

    pub fn insert(&mut self, c: u32, local: LocalChunk) {
        self.0.get_or_insert_with(Box::default).insert(c, local);
    }

    pub fn remove(&mut self, c: &u32) -> Option<LocalChunk> {
        let map = self.0.as_mut()?;
        let out = map.remove(c);
        if map.is_empty() {
            self.0 = None;
        }
        out
    }

    pub fn keys(&self) -> impl Iterator<Item = &u32> {
        self.0.iter().flat_map(|m| m.keys())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &LocalChunk)> {
        self.0.iter().flat_map(|m| m.iter())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl<'a> IntoIterator for &'a LocalChunks {
    type Item = (&'a u32, &'a LocalChunk);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[derive(Debug)]
pub struct TorrentEntry {
    pub uid: [u8; 16],
    pub geometry: Geometry,
    pub states: ChunkStates,
    pub local: LocalChunks,
    /// Pieces verified (in memory as soon as libtorrent says so; durable after commit).
    pub verified: BitSet,
    /// Pieces recorded in the catalog (a subset of `verified`): the committer decides
    /// chunk completeness from these plus its batch, never from `verified` alone.
    pub durable: BitSet,
    /// Seeding with pin: none of the torrent's chunks is evictable.
    pub pinned: bool,
    present: u32,
}

impl TorrentEntry {
    pub fn new(uid: [u8; 16], geometry: Geometry, states: ChunkStates, verified: BitSet) -> Self {
        TorrentEntry {
            uid,
            geometry,
            states,
            local: LocalChunks::default(),
            durable: verified.clone(),
            verified,
            pinned: false,
            present: 0,
        }
    }

    pub fn state(&self, c: u32) -> ChunkState {
        self.states.get(c).unwrap_or(ChunkState::Partial)
    }

    pub fn present(&self, c: u32) -> bool {
        self.local.get(&c).is_some_and(|l| l.present)
    }

    pub fn present_count(&self) -> u32 {
        self.present
    }

    /// Records what is known about a chunk while the entry is being built (recovery).
    pub fn set_local(&mut self, c: u32, local: LocalChunk) {
        if let Some(old) = self.local.remove(&c) {
            self.present -= u32::from(old.present);
        }
        if local.present || self.state(c) == ChunkState::Complete {
            self.present += u32::from(local.present);
            self.local.insert(c, local);
        }
    }

    pub fn chunk_len(&self, c: u32) -> u64 {
        self.geometry.chunk_len(ChunkIndex(c))
    }

    /// Pieces still to verify in the chunks of `chunks` that have begun: not complete,
    /// with at least one piece verified. Downloaded first, they turn begun chunks into
    /// complete ones, the only kind that can be uploaded and then evicted.
    pub fn rest_of_begun_chunks(&self, chunks: Range<u32>) -> Vec<PieceIndex> {
        let g = self.geometry;
        let mut rest = Vec::new();
        for c in chunks.start..chunks.end.min(g.num_chunks()) {
            if self.state(c) != ChunkState::Partial {
                continue;
            }
            let pieces = g.pieces_of_chunk(ChunkIndex(c));
            if !pieces.clone().any(|p| self.verified.contains(p)) {
                continue;
            }
            rest.extend(
                pieces
                    .filter(|&p| !self.verified.contains(p))
                    .map(PieceIndex),
            );
        }
        rest.dedup();
        rest
    }
}

/// A torrent whose entry follows from a few facts: no local chunk, and either settled
/// (every piece verified, every chunk uploaded) or untouched (nothing verified or
/// complete). Most of a library larger than the cache is such torrents:
/// they are kept as these 48 bytes, in a sorted vector, and become a full entry when
/// first used (see [`CacheState::wake`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dormant {
    pub id: TorrentId,
    pub uid: [u8; 16],
    pub geometry: Geometry,
    pub settled: bool,
    /// Seeding with pin: the chunks it gets once woken are not evictable.
    pub pinned: bool,
}

impl Dormant {
    /// The entry this torrent has in full.
    pub fn entry(&self) -> TorrentEntry {
        let g = self.geometry;
        let (state, verified) = if self.settled {
            (ChunkState::Uploaded, BitSet::full(g.num_pieces()))
        } else {
            (ChunkState::Partial, BitSet::empty(g.num_pieces()))
        };
        let mut entry = TorrentEntry::new(
            self.uid,
            g,
            ChunkStates::uniform(g.num_chunks(), state),
            verified,
        );
        entry.pinned = self.pinned;
        entry
    }
}

#[derive(Debug)]
pub struct CacheState {
    /// Boxed: the map has a slot per torrent in use.
    pub torrents: HashMap<TorrentId, Box<TorrentEntry>>,
    /// Torrents not in `torrents` yet, sorted by id.
    dormant: Vec<Dormant>,
    lru: LruCache<ChunkKey, ()>,
    read_pins: HashMap<ChunkKey, u32>,
    used_bytes: u64,
    evictable_bytes: u64,
    unsafe_bytes: u64,
    pinned_bytes: u64,
    present_chunks: u64,
}

/// A summary for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    pub used_bytes: u64,
    pub evictable_bytes: u64,
    pub present_chunks: u64,
    /// Present chunks not yet safe in the remote.
    pub not_uploaded_bytes: u64,
    /// Present, uploaded chunks kept by a pinned (seeding) torrent.
    #[serde(default)]
    pub pinned_bytes: u64,
}

impl Default for CacheState {
    fn default() -> Self {
        CacheState {
            torrents: HashMap::new(),
            dormant: Vec::new(),
            lru: LruCache::unbounded(),
            read_pins: HashMap::new(),
            used_bytes: 0,
            evictable_bytes: 0,
            unsafe_bytes: 0,
            pinned_bytes: 0,
            present_chunks: 0,
        }
    }
}

/// What one chunk adds to the totals.
#[derive(Clone, Copy, Default)]
struct Cost {
    present: u64,
    unsafe_: u64,
    pinned: u64,
}

impl CacheState {
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub fn entry(&self, key: ChunkKey) -> Option<ChunkEntry> {
        let t = self.torrents.get(&key.torrent)?;
        let c = key.index.0;
        let state = t.states.get(c)?;
        let local = t.local.get(&c);
        Some(ChunkEntry {
            len: t.chunk_len(c),
            state,
            present: local.is_some_and(|l| l.present),
            hash: local.and_then(|l| l.hash),
            checked: local.and_then(|l| l.checked),
        })
    }

    /// The object name of a local chunk (complete, or uploaded and present).
    pub fn object_id(&self, key: ChunkKey) -> Option<&str> {
        self.torrents
            .get(&key.torrent)?
            .local
            .get(&key.index.0)?
            .object_id
            .as_deref()
    }

    pub fn present(&self, key: ChunkKey) -> bool {
        self.torrents
            .get(&key.torrent)
            .is_some_and(|t| t.present(key.index.0))
    }

    pub fn state(&self, key: ChunkKey) -> Option<ChunkState> {
        self.torrents.get(&key.torrent)?.states.get(key.index.0)
    }

    fn cost(&self, key: ChunkKey) -> Cost {
        let Some(t) = self.torrents.get(&key.torrent) else {
            return Cost::default();
        };
        let c = key.index.0;
        if !t.present(c) {
            return Cost::default();
        }
        let len = t.chunk_len(c);
        let safe = t.state(c).is_safe_in_remote();
        Cost {
            present: len,
            unsafe_: if safe { 0 } else { len },
            pinned: if safe && t.pinned { len } else { 0 },
        }
    }

    fn add_cost(&mut self, c: Cost, sign: i8) {
        let apply = |v: &mut u64, d: u64| {
            if sign > 0 {
                *v += d
            } else {
                *v -= d
            }
        };
        apply(&mut self.used_bytes, c.present);
        apply(&mut self.unsafe_bytes, c.unsafe_);
        apply(&mut self.pinned_bytes, c.pinned);
        if c.present > 0 {
            apply(&mut self.present_chunks, 1);
        }
    }

    /// Applies `f` to a chunk with the totals, the `local` map and the LRU kept right.
    /// Returns `None` for an unknown chunk.
    fn update<R>(
        &mut self,
        key: ChunkKey,
        f: impl FnOnce(&mut ChunkStates, &mut LocalChunk) -> R,
    ) -> Option<R> {
        let c = key.index.0;
        self.torrents.get(&key.torrent)?.states.get(c)?;
        let before = self.cost(key);
        self.add_cost(before, -1);
        let t = self.torrents.get_mut(&key.torrent)?;
        let mut local = t.local.remove(&c).unwrap_or_default();
        let was_present = local.present;
        let r = f(&mut t.states, &mut local);
        if !local.present {
            local.checked = None;
        }
        t.present = t.present + u32::from(local.present) - u32::from(was_present);
        if local.present || t.state(c) == ChunkState::Complete {
            t.local.insert(c, local);
        }
        let after = self.cost(key);
        self.add_cost(after, 1);
        self.refresh(key);
        Some(r)
    }

    fn evictable(&self, key: ChunkKey) -> bool {
        let Some(t) = self.torrents.get(&key.torrent) else {
            return false;
        };
        let c = key.index.0;
        t.present(c)
            && t.state(c).is_safe_in_remote()
            && !t.pinned
            && self.read_pins.get(&key).copied().unwrap_or(0) == 0
    }

    /// Re-derives whether `key` belongs in the LRU after any change to it.
    fn refresh(&mut self, key: ChunkKey) {
        if self.evictable(key) {
            if !self.lru.contains(&key) {
                self.lru.put(key, ());
                self.evictable_bytes += self.len_of(key);
            }
        } else if self.lru.pop(&key).is_some() {
            self.evictable_bytes -= self.len_of(key);
        }
    }

    fn len_of(&self, key: ChunkKey) -> u64 {
        self.torrents
            .get(&key.torrent)
            .map_or(0, |t| t.chunk_len(key.index.0))
    }

    fn local_keys(&self, id: TorrentId) -> Vec<ChunkKey> {
        // In chunk order, so that the LRU order of a freshly loaded torrent is stable.
        let mut keys: Vec<ChunkKey> = self.torrents.get(&id).map_or_else(Vec::new, |t| {
            t.local.keys().map(|&c| ChunkKey::new(id, c)).collect()
        });
        keys.sort_unstable_by_key(|k| k.index.0);
        keys
    }

    /// Records the dormant torrents (at start).
    pub fn set_dormant(&mut self, mut dormant: Vec<Dormant>) {
        dormant.sort_unstable_by_key(|d| d.id);
        dormant.dedup_by_key(|d| d.id);
        dormant.shrink_to_fit();
        self.dormant = dormant;
    }

    fn dormant_at(&self, id: TorrentId) -> Option<usize> {
        self.dormant.binary_search_by_key(&id, |d| d.id).ok()
    }

    pub fn dormant(&self, id: TorrentId) -> Option<&Dormant> {
        self.dormant.get(self.dormant_at(id)?)
    }

    /// Turns a dormant torrent into a full entry. Returns whether `id` was dormant.
    pub fn wake(&mut self, id: TorrentId) -> bool {
        let Some(i) = self.dormant_at(id) else {
            return false;
        };
        let d = self.dormant.remove(i);
        self.insert_torrent(id, d.entry());
        true
    }

    pub fn insert_torrent(&mut self, id: TorrentId, entry: TorrentEntry) {
        self.remove_torrent(id);
        self.torrents.insert(id, Box::new(entry));
        for key in self.local_keys(id) {
            let cost = self.cost(key);
            self.add_cost(cost, 1);
            self.refresh(key);
        }
    }

    pub fn remove_torrent(&mut self, id: TorrentId) -> Option<TorrentEntry> {
        if let Some(i) = self.dormant_at(id) {
            self.dormant.remove(i);
        }
        for key in self.local_keys(id) {
            let cost = self.cost(key);
            self.add_cost(cost, -1);
            if self.lru.pop(&key).is_some() {
                self.evictable_bytes -= self.len_of(key);
            }
            self.read_pins.remove(&key);
        }
        self.torrents.remove(&id).map(|t| *t)
    }

    /// Records that a chunk's local file now exists (or not). Returns false for an
    /// unknown chunk.
    pub fn set_present(&mut self, key: ChunkKey, present: bool) -> bool {
        self.update(key, |_, l| l.present = present).is_some()
    }

    pub fn set_state(&mut self, key: ChunkKey, state: ChunkState) {
        self.update(key, |s, _| {
            s.set(key.index.0, state);
        });
    }

    /// A chunk became complete (or was re-queued) with this hash and object name.
    pub fn set_complete(&mut self, key: ChunkKey, hash: [u8; 32], object_id: String) {
        self.update(key, |s, l| {
            s.set(key.index.0, ChunkState::Complete);
            l.hash = Some(hash);
            l.object_id = Some(object_id);
        });
    }

    /// A fetched chunk's file was installed: present, with its identity, checked.
    pub fn set_fetched(
        &mut self,
        key: ChunkKey,
        hash: [u8; 32],
        object_id: String,
        stamp: FileStamp,
    ) {
        self.update(key, |_, l| {
            l.present = true;
            l.hash = Some(hash);
            l.object_id = Some(object_id);
            l.checked = Some(stamp);
        });
    }

    pub fn set_checked(&mut self, key: ChunkKey, checked: Option<FileStamp>) {
        if let Some(l) = self
            .torrents
            .get_mut(&key.torrent)
            .and_then(|t| t.local.get_mut(&key.index.0))
        {
            l.checked = checked;
        }
    }

    /// Forgets what a chunk was known to be (its bytes were lost): partial, no hash, no
    /// object. Accounting and LRU membership follow.
    pub fn reset_chunk(&mut self, key: ChunkKey) {
        self.update(key, |s, l| {
            s.set(key.index.0, ChunkState::Partial);
            l.hash = None;
            l.object_id = None;
            l.checked = None;
        });
    }

    pub fn set_torrent_pinned(&mut self, id: TorrentId, pinned: bool) {
        // A dormant torrent has no local chunk to account: only its flag changes.
        if let Some(i) = self.dormant_at(id) {
            self.dormant[i].pinned = pinned;
            return;
        }
        if self.torrents.get(&id).is_none_or(|t| t.pinned == pinned) {
            return;
        }
        let keys = self.local_keys(id);
        for &key in &keys {
            let cost = self.cost(key);
            self.add_cost(cost, -1);
        }
        if let Some(t) = self.torrents.get_mut(&id) {
            t.pinned = pinned;
        }
        for key in keys {
            let cost = self.cost(key);
            self.add_cost(cost, 1);
            self.refresh(key);
        }
    }

    /// Marks a chunk as in use by a reader: it cannot be evicted until unpinned.
    pub fn pin(&mut self, key: ChunkKey) {
        *self.read_pins.entry(key).or_insert(0) += 1;
        self.refresh(key);
    }

    pub fn unpin(&mut self, key: ChunkKey) {
        if let Some(n) = self.read_pins.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.read_pins.remove(&key);
            }
        }
        // Re-entering the LRU puts it at the most-recently-used end: it was just read.
        self.refresh(key);
    }

    /// Picks the least recently used evictable chunk and marks it absent. The caller
    /// deletes its file (while still holding the lock, so a concurrent fetch cannot
    /// lose its fresh file to this eviction).
    pub fn evict_one(&mut self) -> Option<ChunkKey> {
        let (key, ()) = self.lru.peek_lru().map(|(k, v)| (*k, *v))?;
        self.set_present(key, false);
        Some(key)
    }

    /// Chunks that could be evicted now.
    pub fn evictable_chunks(&self) -> usize {
        self.lru.len()
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            used_bytes: self.used_bytes,
            evictable_bytes: self.evictable_bytes,
            present_chunks: self.present_chunks,
            not_uploaded_bytes: self.unsafe_bytes,
            pinned_bytes: self.pinned_bytes,
        }
    }

    /// Chunks complete but not yet uploaded, over all torrents (O(torrents)).
    pub fn not_uploaded_chunks(&self) -> usize {
        self.torrents
            .values()
            .map(|t| (t.states.complete() - t.states.uploaded()) as usize)
            .sum()
    }

    /// Recomputes every total from scratch (tests: the incremental totals must agree).
    #[cfg(test)]
    pub fn recomputed(&self) -> CacheStats {
        let mut s = CacheStats::default();
        for (&id, t) in &self.torrents {
            for (&c, l) in &t.local {
                if !l.present {
                    continue;
                }
                let len = t.chunk_len(c);
                s.used_bytes += len;
                s.present_chunks += 1;
                if t.state(c).is_safe_in_remote() {
                    if t.pinned {
                        s.pinned_bytes += len;
                    }
                } else {
                    s.not_uploaded_bytes += len;
                }
                if self.lru.contains(&ChunkKey::new(id, c)) {
                    s.evictable_bytes += len;
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CHUNK_LEN;

    fn torrent(chunks: u32, state: ChunkState, present: bool) -> TorrentEntry {
        let g = Geometry::new(u64::from(chunks) * CHUNK_LEN, 1 << 20).unwrap();
        let verified = if state == ChunkState::Partial {
            BitSet::empty(chunks)
        } else {
            BitSet::full(chunks)
        };
        let mut t = TorrentEntry::new([0; 16], g, ChunkStates::uniform(chunks, state), verified);
        for c in 0..chunks {
            t.set_local(
                c,
                LocalChunk {
                    present,
                    ..Default::default()
                },
            );
        }
        t
    }

    const T: TorrentId = TorrentId(1);

    #[test]
    fn the_rest_of_begun_chunks_is_their_unverified_pieces() {
        // 256 KiB pieces: four per chunk; 3 chunks and a half.
        let g = Geometry::new(3 * CHUNK_LEN + CHUNK_LEN / 2, 256 << 10).unwrap();
        let n = g.num_pieces();
        assert_eq!(n, 14);
        let mut verified = BitSet::empty(n);
        // Chunk 0 untouched; chunk 1 begun (pieces 4, 6); chunk 2 complete; chunk 3
        // (two pieces) begun with piece 13.
        for p in [4, 6, 8, 9, 10, 11, 13] {
            verified.insert(p);
        }
        let mut states = ChunkStates::uniform(g.num_chunks(), ChunkState::Partial);
        states.set(2, ChunkState::Complete);
        let t = TorrentEntry::new([0; 16], g, states, verified);
        let rest = |r: Range<u32>| -> Vec<u32> {
            t.rest_of_begun_chunks(r).into_iter().map(|p| p.0).collect()
        };
        assert_eq!(rest(0..4), vec![5, 7, 12]);
        assert_eq!(rest(0..1), Vec::<u32>::new());
        assert_eq!(rest(1..2), vec![5, 7]);
        assert_eq!(rest(3..9), vec![12]);
        // Pieces larger than a chunk: a chunk is never begun without being complete.
        let big = Geometry::new(8 * CHUNK_LEN, 4 << 20).unwrap();
        let mut v = BitSet::empty(2);
        v.insert(0);
        let t = TorrentEntry::new(
            [0; 16],
            big,
            ChunkStates::uniform(8, ChunkState::Partial),
            v,
        );
        // (Its chunks are Partial only until the committer runs; nothing to add.)
        assert!(t.rest_of_begun_chunks(0..8).is_empty());
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut c = CacheState::default();
        c.insert_torrent(T, torrent(4, ChunkState::Uploaded, true));
        assert_eq!(c.used_bytes(), 4 * CHUNK_LEN);
        c.pin(ChunkKey::new(T, 0));
        c.unpin(ChunkKey::new(T, 0));
        c.pin(ChunkKey::new(T, 1));
        c.unpin(ChunkKey::new(T, 1));
        // Order now: 2, 3, 0, 1.
        let order: Vec<u32> = std::iter::from_fn(|| c.evict_one())
            .map(|k| k.index.0)
            .collect();
        assert_eq!(order, vec![2, 3, 0, 1]);
        assert_eq!(c.used_bytes(), 0);
        assert_eq!(c.stats(), c.recomputed());
        assert!(
            c.torrents[&T].local.is_empty(),
            "uploaded, absent: nothing in memory"
        );
    }

    #[test]
    fn never_evicts_pinned_or_unuploaded_chunks() {
        let mut c = CacheState::default();
        c.insert_torrent(T, torrent(3, ChunkState::Complete, true));
        assert_eq!(c.evict_one(), None, "complete but not uploaded");
        c.set_state(ChunkKey::new(T, 0), ChunkState::Uploaded);
        c.set_state(ChunkKey::new(T, 1), ChunkState::Uploaded);
        c.pin(ChunkKey::new(T, 0));
        c.pin(ChunkKey::new(T, 0));
        assert_eq!(c.evict_one(), Some(ChunkKey::new(T, 1)));
        assert_eq!(c.evict_one(), None, "read-pinned twice");
        c.unpin(ChunkKey::new(T, 0));
        assert_eq!(c.evict_one(), None, "still pinned once");
        c.set_torrent_pinned(T, true);
        assert_eq!(c.stats().pinned_bytes, CHUNK_LEN);
        c.unpin(ChunkKey::new(T, 0));
        assert_eq!(c.evict_one(), None, "torrent pinned");
        assert_eq!(c.stats(), c.recomputed());
        c.set_torrent_pinned(T, false);
        assert_eq!(c.stats().pinned_bytes, 0);
        assert_eq!(c.evict_one(), Some(ChunkKey::new(T, 0)));
        let s = c.stats();
        assert_eq!(s.present_chunks, 1);
        assert_eq!(s.not_uploaded_bytes, CHUNK_LEN);
        assert_eq!(s.used_bytes, CHUNK_LEN);
        assert_eq!(s, c.recomputed());
        assert_eq!(c.not_uploaded_chunks(), 1);
    }

    #[test]
    fn accounting_follows_presence_and_removal() {
        let mut c = CacheState::default();
        c.insert_torrent(T, torrent(3, ChunkState::Partial, false));
        assert_eq!(c.used_bytes(), 0);
        assert!(c.torrents[&T].local.is_empty());
        assert!(c.set_present(ChunkKey::new(T, 2), true));
        assert!(c.set_present(ChunkKey::new(T, 2), true));
        assert_eq!(c.used_bytes(), CHUNK_LEN);
        assert!(!c.set_present(ChunkKey::new(T, 9), true));
        c.insert_torrent(TorrentId(2), torrent(2, ChunkState::Uploaded, true));
        assert_eq!(c.used_bytes(), 3 * CHUNK_LEN);
        assert_eq!(c.stats().evictable_bytes, 2 * CHUNK_LEN);
        c.remove_torrent(TorrentId(2));
        assert_eq!(c.used_bytes(), CHUNK_LEN);
        assert_eq!(c.stats(), c.recomputed());
        assert_eq!(c.evict_one(), None);
    }

    #[test]
    fn complete_chunks_keep_their_identity_until_reset() {
        let mut c = CacheState::default();
        c.insert_torrent(T, torrent(2, ChunkState::Partial, false));
        let k = ChunkKey::new(T, 1);
        c.set_present(k, true);
        c.set_complete(k, [7; 32], "oid".into());
        let e = c.entry(k).unwrap();
        assert_eq!((e.state, e.hash), (ChunkState::Complete, Some([7; 32])));
        assert_eq!(c.object_id(k), Some("oid"));
        assert_eq!(c.stats().not_uploaded_bytes, CHUNK_LEN);
        // Lost its file while complete: still known (it must be revoked or refetched).
        c.set_present(k, false);
        assert_eq!(c.entry(k).unwrap().hash, Some([7; 32]));
        c.reset_chunk(k);
        assert!(c.torrents[&T].local.is_empty());
        assert_eq!(c.entry(k).unwrap().state, ChunkState::Partial);
        assert_eq!(c.stats(), c.recomputed());
    }
}
