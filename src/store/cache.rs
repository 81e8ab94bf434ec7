//! In-memory bookkeeping of the chunk cache: which chunks are present locally, what
//! they cost, which are pinned, and the LRU order of the evictable ones.
//!
//! Pure logic, no I/O, so eviction order, pins and size accounting are unit tested.
//! Invariants:
//! - `used_bytes` is the sum of `len` over present chunks.
//! - A chunk is in `lru` iff it is present, uploaded, not pinned by its torrent and has
//!   no read pins. Only chunks in `lru` are ever evicted, so a chunk that is not yet
//!   safe in the remote never leaves the cache.

use std::collections::HashMap;

use lru::LruCache;

use crate::model::{ChunkKey, ChunkState, Geometry, TorrentId};

pub use super::files::FileStamp;

/// Per-chunk facts the cache needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub len: u64,
    pub state: ChunkState,
    pub present: bool,
    pub hash: Option<[u8; 32]>,
    pub object_id: Option<String>,
    /// The local file as it was when last checked against `hash` (since it was written,
    /// fetched or loaded at start-up). A read of a complete chunk whose file no longer
    /// has this stamp (never checked, or changed since) hashes it again first.
    pub checked: Option<FileStamp>,
}

#[derive(Debug)]
pub struct TorrentEntry {
    pub uid: [u8; 16],
    pub geometry: Geometry,
    pub chunks: Vec<ChunkEntry>,
    /// Pieces verified (in memory as soon as libtorrent says so; durable after commit).
    pub verified: Vec<bool>,
    pub verified_count: u32,
    /// Pieces recorded in the catalog (a subset of `verified`): the committer decides
    /// chunk completeness from these plus its batch, never from `verified` alone.
    pub durable: Vec<bool>,
    /// Seeding with pin: none of the torrent's chunks is evictable.
    pub pinned: bool,
}

#[derive(Debug)]
pub struct CacheState {
    pub torrents: HashMap<TorrentId, TorrentEntry>,
    lru: LruCache<ChunkKey, ()>,
    read_pins: HashMap<ChunkKey, u32>,
    used_bytes: u64,
}

/// A summary for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheStats {
    pub used_bytes: u64,
    pub evictable_bytes: u64,
    pub present_chunks: u64,
    /// Present chunks not yet safe in the remote.
    pub not_uploaded_bytes: u64,
}

impl Default for CacheState {
    fn default() -> Self {
        CacheState {
            torrents: HashMap::new(),
            lru: LruCache::unbounded(),
            read_pins: HashMap::new(),
            used_bytes: 0,
        }
    }
}

impl CacheState {
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub fn entry(&self, key: ChunkKey) -> Option<&ChunkEntry> {
        self.torrents
            .get(&key.torrent)?
            .chunks
            .get(key.index.0 as usize)
    }

    fn entry_mut(&mut self, key: ChunkKey) -> Option<&mut ChunkEntry> {
        self.torrents
            .get_mut(&key.torrent)?
            .chunks
            .get_mut(key.index.0 as usize)
    }

    fn evictable(&self, key: ChunkKey) -> bool {
        let Some(t) = self.torrents.get(&key.torrent) else {
            return false;
        };
        let Some(c) = t.chunks.get(key.index.0 as usize) else {
            return false;
        };
        c.present
            && c.state.is_safe_in_remote()
            && !t.pinned
            && self.read_pins.get(&key).copied().unwrap_or(0) == 0
    }

    /// Re-derives whether `key` belongs in the LRU after any change to it.
    fn refresh(&mut self, key: ChunkKey) {
        if self.evictable(key) {
            if !self.lru.contains(&key) {
                self.lru.put(key, ());
            }
        } else {
            self.lru.pop(&key);
        }
    }

    pub fn insert_torrent(&mut self, id: TorrentId, entry: TorrentEntry) {
        let n = entry.chunks.len() as u32;
        self.remove_torrent(id);
        self.used_bytes += entry
            .chunks
            .iter()
            .filter(|c| c.present)
            .map(|c| c.len)
            .sum::<u64>();
        self.torrents.insert(id, entry);
        for i in 0..n {
            self.refresh(ChunkKey::new(id, i));
        }
    }

    pub fn remove_torrent(&mut self, id: TorrentId) -> Option<TorrentEntry> {
        let t = self.torrents.remove(&id)?;
        for (i, c) in t.chunks.iter().enumerate() {
            let key = ChunkKey::new(id, i as u32);
            self.lru.pop(&key);
            self.read_pins.remove(&key);
            if c.present {
                self.used_bytes -= c.len;
            }
        }
        Some(t)
    }

    /// Records that a chunk's local file now exists. Returns false for an unknown chunk.
    pub fn set_present(&mut self, key: ChunkKey, present: bool) -> bool {
        let Some(c) = self.entry_mut(key) else {
            return false;
        };
        if !present {
            c.checked = None;
        }
        if c.present != present {
            c.present = present;
            let len = c.len;
            if present {
                self.used_bytes += len;
            } else {
                self.used_bytes -= len;
            }
        }
        self.refresh(key);
        true
    }

    pub fn set_state(&mut self, key: ChunkKey, state: ChunkState) {
        if let Some(c) = self.entry_mut(key) {
            c.state = state;
        }
        self.refresh(key);
    }

    pub fn set_checked(&mut self, key: ChunkKey, checked: Option<FileStamp>) {
        if let Some(c) = self.entry_mut(key) {
            c.checked = checked;
        }
    }

    /// Forgets what a chunk was known to be (its bytes were lost): partial, no hash, no
    /// object. Accounting and LRU membership follow.
    pub fn reset_chunk(&mut self, key: ChunkKey) {
        if let Some(c) = self.entry_mut(key) {
            c.state = ChunkState::Partial;
            c.hash = None;
            c.object_id = None;
            c.checked = None;
        }
        self.refresh(key);
    }

    pub fn set_torrent_pinned(&mut self, id: TorrentId, pinned: bool) {
        let Some(t) = self.torrents.get_mut(&id) else {
            return;
        };
        t.pinned = pinned;
        let n = t.chunks.len() as u32;
        for i in 0..n {
            self.refresh(ChunkKey::new(id, i));
        }
    }

    /// Marks a chunk as in use by a reader: it cannot be evicted until unpinned.
    pub fn pin(&mut self, key: ChunkKey) {
        *self.read_pins.entry(key).or_insert(0) += 1;
        self.lru.pop(&key);
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
        let (key, ()) = self.lru.pop_lru()?;
        if let Some(c) = self.entry_mut(key) {
            c.present = false;
            c.checked = None;
            self.used_bytes -= c.len;
        }
        Some(key)
    }

    pub fn stats(&self) -> CacheStats {
        let mut s = CacheStats {
            used_bytes: self.used_bytes,
            ..Default::default()
        };
        for t in self.torrents.values() {
            for c in t.chunks.iter().filter(|c| c.present) {
                s.present_chunks += 1;
                if !c.state.is_safe_in_remote() {
                    s.not_uploaded_bytes += c.len;
                }
            }
        }
        s.evictable_bytes = self
            .lru
            .iter()
            .filter_map(|(k, ())| self.entry(*k).map(|c| c.len))
            .sum();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CHUNK_LEN;

    fn torrent(chunks: u32, state: ChunkState, present: bool) -> TorrentEntry {
        let g = Geometry::new(u64::from(chunks) * CHUNK_LEN, 1 << 20).unwrap();
        TorrentEntry {
            uid: [0; 16],
            geometry: g,
            chunks: (0..chunks)
                .map(|_| ChunkEntry {
                    len: CHUNK_LEN,
                    state,
                    present,
                    hash: None,
                    object_id: None,
                    checked: None,
                })
                .collect(),
            verified: vec![false; chunks as usize],
            verified_count: 0,
            durable: vec![false; chunks as usize],
            pinned: false,
        }
    }

    const T: TorrentId = TorrentId(1);

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
        c.unpin(ChunkKey::new(T, 0));
        assert_eq!(c.evict_one(), None, "torrent pinned");
        c.set_torrent_pinned(T, false);
        assert_eq!(c.evict_one(), Some(ChunkKey::new(T, 0)));
        let s = c.stats();
        assert_eq!(s.present_chunks, 1);
        assert_eq!(s.not_uploaded_bytes, CHUNK_LEN);
        assert_eq!(s.used_bytes, CHUNK_LEN);
    }

    #[test]
    fn accounting_follows_presence_and_removal() {
        let mut c = CacheState::default();
        c.insert_torrent(T, torrent(3, ChunkState::Partial, false));
        assert_eq!(c.used_bytes(), 0);
        assert!(c.set_present(ChunkKey::new(T, 2), true));
        assert!(c.set_present(ChunkKey::new(T, 2), true));
        assert_eq!(c.used_bytes(), CHUNK_LEN);
        assert!(!c.set_present(ChunkKey::new(T, 9), true));
        c.insert_torrent(TorrentId(2), torrent(2, ChunkState::Uploaded, true));
        assert_eq!(c.used_bytes(), 3 * CHUNK_LEN);
        c.remove_torrent(TorrentId(2));
        assert_eq!(c.used_bytes(), CHUNK_LEN);
        assert_eq!(c.evict_one(), None);
    }
}
