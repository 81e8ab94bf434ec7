//! Serving bytes out of the store: to the filesystem (verified bytes only) and to
//! libtorrent (raw bytes, for hashing and seeding).
//!
//! Rules kept here:
//! - A complete chunk's file is used only if it carries the stamp it had when it was
//!   last hashed against the recorded hash; otherwise it is hashed first. A missing file
//!   or a mismatch makes the chunk damaged ([`Store::chunk_damaged`]).
//! - An evicted chunk is fetched once for all the readers that want it (single flight)
//!   and the fetched, verified bytes serve those readers directly from memory; the file
//!   is written into the cache in the background. So a read of N chunks costs at most N
//!   fetches (plus one more per chunk found damaged), whatever the cache pressure.
//! - A reader whose fetch takes many times longer than fetches do (a request the remote
//!   never answers, a retry asleep in its backoff after the remote came back) starts a
//!   second attempt alongside it, at most twice per fetch; the first to bring verified
//!   bytes serves every reader of the chunk.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};

use crate::model::{ChunkKey, ChunkState, PieceIndex, TorrentId, CHUNK_LEN};

use super::files::{self, FileStamp};
use super::lane::Lane;
use super::{
    FetchError, Inflight, PinGuard, RemoteChunk, SharedFetch, Store, StoreError, HINT_FRESH,
};

/// Longest a fetch ahead of the readers waits for fetches that readers wait on (long in
/// unit tests, so that they can tell this bound from a reader's call).
#[cfg(not(test))]
const AHEAD_MAX_WAIT: Duration = Duration::from_millis(50);
#[cfg(test)]
const AHEAD_MAX_WAIT: Duration = Duration::from_secs(2);

/// A reader waits on a fetch for at most this many times a typical fetch (within
/// `HEDGE_FLOOR..HEDGE_CEILING`) before it starts another attempt alongside it.
const HEDGE_FACTOR: u32 = 8;
/// Long in unit tests, so that those about fetch order see no second attempt; the hedge
/// test lowers it.
#[cfg(not(test))]
pub(super) const HEDGE_FLOOR: Duration = Duration::from_secs(1);
#[cfg(test)]
pub(super) const HEDGE_FLOOR: Duration = Duration::from_secs(60);
const HEDGE_CEILING: Duration = Duration::from_secs(10);
/// Attempts a fetch gets beyond its first.
const MAX_HEDGES: u32 = 2;
/// What a fetch is taken to cost before one was measured.
pub(super) const TYPICAL_FETCH_START: Duration = Duration::from_millis(100);

/// Ranges a fetch is asked for in when a reader waits on it and no other reader waits
/// on a fetch (see [`ChunkSource::fetch_parts`](super::ChunkSource::fetch_parts)): the
/// first byte after a seek or an open comes sooner, and a busy link is not asked for
/// more requests than chunks.
pub(super) const IDLE_DEMAND_PARTS: usize = 4;

/// Chunks in the aligned extent a peer's read brings back from the remote: libtorrent
/// downloads pieces in 4 MiB extents (`piece_extent_affinity`), so a peer that asks for
/// one chunk of an extent asks for the rest next (+4 % seeding from the remote).
pub(super) const PEER_EXTENT_CHUNKS: u64 = 4;

/// Fetches started ahead of peers' reads, at most, counting those running already.
pub(super) const PEER_FETCHES_AHEAD: usize = 16;

/// Chunks read into memory together ahead of a sequential reader (an aligned group; see
/// [`Store::load_ahead`]).
pub(super) const LOAD_GROUP_CHUNKS: u32 = 4;

/// Whether a reader waits for a fetch or it is ahead of the readers (prefetch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Urgency {
    Demand,
    Ahead,
}

/// Who wants a chunk brought closer (see [`Store::prefetch_chunk`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// A reader's next read (a file's head on open): fetched as if it waited already.
    Next,
    /// A sequential reader's read-ahead.
    Ahead,
    /// A peer's queue of block requests.
    Peer,
}

/// Counts a demand fetch as running while it lives.
struct DemandFetch(Arc<Store>);

impl DemandFetch {
    fn start(store: &Arc<Store>) -> Self {
        store.demand_fetches.send_modify(|n| *n += 1);
        DemandFetch(Arc::clone(store))
    }
}

impl Drop for DemandFetch {
    fn drop(&mut self) {
        self.0
            .demand_fetches
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Where one chunk's part of a read comes from (see [`Store::span`]).
enum Span {
    /// Exactly the part's bytes, verified, in memory.
    Memory(Bytes),
    /// A chunk file to read the part from as it is (checked since it was last written,
    /// or a partial chunk's sparse bytes); zeros past its end. Pinned while read.
    File {
        file: Arc<std::fs::File>,
        path: std::path::PathBuf,
        _pin: Option<PinGuard>,
    },
    /// Nothing stored: zeros.
    Zeros,
}

/// What to do for one chunk of a read, decided under the state lock.
enum Plan {
    /// A partial chunk (or one never written): sparse bytes, no hash to check.
    Sparse(Option<PinGuard>),
    /// A complete chunk with a local file.
    Local {
        _pin: PinGuard,
        uid: [u8; 16],
        hash: [u8; 32],
        len: u64,
        checked: Option<FileStamp>,
    },
    /// An uploaded chunk that is not local: its identity is in the catalog.
    Fetch { uid: [u8; 16], len: u64 },
}

impl Store {
    /// Reads raw stream bytes for libtorrent (hashing, seeding): whatever is stored for
    /// partial chunks, checked bytes for complete ones. An evicted chunk is fetched from
    /// the remote first. Blocking: call from a worker thread, never inside the runtime.
    pub fn read_raw_blocking(
        self: &Arc<Self>,
        id: TorrentId,
        stream_offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        // A peer's request is worthless after this long; it also bounds how long a
        // session shutdown can wait for a read stuck on the remote.
        const PEER_READ_TIMEOUT: Duration = Duration::from_secs(30);
        let read = self.read_into(id, stream_offset, buf);
        self.rt
            .clone()
            .block_on(async { tokio::time::timeout(PEER_READ_TIMEOUT, read).await })
            .unwrap_or_else(|_| {
                Err(StoreError::Fetch {
                    key: ChunkKey::new(id, (stream_offset / CHUNK_LEN) as u32),
                    error: FetchError::Unavailable("timed out".into()),
                })
            })
    }

    /// [`Store::read_raw_blocking`] on a thread that must never wait (libtorrent's
    /// network thread): `None` unless every byte is at hand, verified and in memory or
    /// in the page cache; the caller then hands the read to a worker (`buf` may have
    /// been written to meanwhile). A peer's block answered here skips two thread
    /// hand-offs, each a wake-up of a thread asleep on another CPU.
    pub fn read_raw_now(
        self: &Arc<Self>,
        id: TorrentId,
        stream_offset: u64,
        buf: &mut [u8],
    ) -> Option<Result<(), StoreError>> {
        let range = stream_offset..stream_offset + buf.len() as u64;
        // Never the catalog (a torrent to load) nor a fetch from here.
        let loaded = self.lock().torrents.contains_key(&id);
        if !loaded || !self.readable_now(id, range) {
            return None;
        }
        let read = std::pin::pin!(self.read_into(id, stream_offset, buf));
        match crate::nowait::poll_once(read) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => None,
        }
    }

    /// Reads verified stream bytes (for the filesystem). Fails with `NotVerified` when a
    /// piece of the range is not downloaded yet (or was revoked by a damaged chunk).
    /// A range inside one chunk held in memory is a slice of it, not a copy.
    pub async fn read_verified(
        self: &Arc<Self>,
        id: TorrentId,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let parts = match self.read_parts(id, range.clone()).await {
            Ok(parts) => parts,
            Err(StoreError::Revoked(_)) => {
                return Err(StoreError::NotVerified {
                    torrent: id,
                    missing: self.missing_pieces(id, range)?,
                })
            }
            Err(e) => return Err(e),
        };
        if let [(Span::Memory(b), _, _)] = parts.as_slice() {
            return Ok(b.clone());
        }
        // One buffer, each chunk's part read (or copied) into its place.
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.2).sum());
        for (span, offset, len) in parts {
            match span {
                Span::Memory(b) => out.extend_from_slice(&b),
                Span::Zeros => out.resize(out.len() + len, 0),
                Span::File { file, path, .. } => {
                    // A poll that must not block reads only what the page cache holds.
                    let cached = crate::nowait::active()
                        && files::append_at_cached(&file, offset, len, &mut out).unwrap_or(false);
                    if !cached {
                        crate::nowait::yield_once().await;
                        files::append_at(&file, offset, len, &mut out)
                            .map_err(|e| StoreError::io(&path, e))?;
                    }
                }
            }
        }
        Ok(Bytes::from(out))
    }

    /// Where the verified bytes of `range` are: one span per chunk it spans, with the
    /// offset and length of its part. Fetches of several chunks run in parallel.
    async fn read_parts(
        self: &Arc<Self>,
        id: TorrentId,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<(Span, u64, usize)>, StoreError> {
        let (uid, geometry) = self.torrent_geometry(id, range.start, range.end)?;
        let missing = self.missing_pieces(id, range.clone())?;
        if !missing.is_empty() {
            return Err(StoreError::NotVerified {
                torrent: id,
                missing,
            });
        }
        let parts = geometry.chunk_spans(range).map(|span| async move {
            let key = ChunkKey::new(id, span.chunk.0);
            let (offset, len) = (span.offset_in_chunk, span.len as usize);
            Ok::<_, StoreError>((self.span(key, &uid, offset, len).await?, offset, len))
        });
        futures::future::try_join_all(parts).await
    }

    /// Pieces overlapping a stream range that are not verified yet.
    pub fn missing_pieces(
        &self,
        id: TorrentId,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<PieceIndex>, StoreError> {
        let st = self.lock_loaded(id)?;
        let t = st.torrents.get(&id).ok_or(StoreError::UnknownTorrent(id))?;
        let g = t.geometry;
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        let first = (range.start / g.piece_len()) as u32;
        let last = ((range.end - 1).min(g.total_len().saturating_sub(1)) / g.piece_len()) as u32;
        Ok((first..=last)
            .filter(|&p| !t.verified.contains(p))
            .map(PieceIndex)
            .collect())
    }

    /// Whether every byte of a stream range can be read without waiting: its pieces are
    /// verified and its chunks are in the local cache (or just fetched, in memory).
    pub fn readable_now(&self, id: TorrentId, range: std::ops::Range<u64>) -> bool {
        let elsewhere: Vec<u32> = {
            let Ok(st) = self.lock_loaded(id) else {
                return false;
            };
            let Some(t) = st.torrents.get(&id) else {
                return false;
            };
            let g = t.geometry;
            if range.start >= range.end || range.end > g.total_len() {
                return false;
            }
            let (first, last) = (range.start / g.piece_len(), (range.end - 1) / g.piece_len());
            if !(first as u32..=last as u32).all(|p| t.verified.contains(p)) {
                return false;
            }
            let (first, last) = (range.start / CHUNK_LEN, (range.end - 1) / CHUNK_LEN);
            (first as u32..=last as u32)
                .filter(|&c| !t.present(c))
                .collect()
        };
        let hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        elsewhere
            .iter()
            .all(|&c| hot.contains(&ChunkKey::new(id, c)))
    }

    /// A receiver that changes whenever pieces are verified (for readers that wait).
    pub fn watch_verified(&self) -> tokio::sync::watch::Receiver<u64> {
        self.verified_tx.subscribe()
    }

    /// Raw stream bytes into `buf` (see [`Store::read_raw_blocking`]).
    async fn read_into(
        self: &Arc<Self>,
        id: TorrentId,
        stream_offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        let end = stream_offset + buf.len() as u64;
        let (uid, geometry) = self.torrent_geometry(id, stream_offset, end)?;
        for span in geometry.chunk_spans(stream_offset..end) {
            let key = ChunkKey::new(id, span.chunk.0);
            let lo = (span.stream_offset - stream_offset) as usize;
            let out = &mut buf[lo..lo + span.len as usize];
            match self
                .span(key, &uid, span.offset_in_chunk, out.len())
                .await?
            {
                Span::Memory(b) => out.copy_from_slice(&b),
                Span::File { file, path, .. } => {
                    // A poll that must not block reads only what the page cache holds.
                    let cached = crate::nowait::active()
                        && files::read_at_cached(&file, span.offset_in_chunk, out).unwrap_or(false);
                    if !cached {
                        crate::nowait::yield_once().await;
                        files::read_file_at(&file, span.offset_in_chunk, out)
                            .map_err(|e| StoreError::io(&path, e))?
                    }
                }
                Span::Zeros => out.fill(0),
            }
        }
        Ok(())
    }

    /// Where the `len` bytes of chunk `key` from `offset` are to be read: memory (a
    /// fetched chunk, or one just hashed), an open file whose bytes may be used as they
    /// are, or nothing stored (a partial chunk's bytes never written).
    async fn span(
        self: &Arc<Self>,
        key: ChunkKey,
        uid: &[u8; 16],
        offset: u64,
        len: usize,
    ) -> Result<Span, StoreError> {
        let check = self
            .checking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(check) = check {
            check.await;
        }
        if let Some(bytes) = self.hot_get(key).or_else(|| self.loaded_get(key)) {
            return Ok(Span::Memory(slice_of(&bytes, offset, len)));
        }
        // At most two rounds: a damaged local copy is dropped once, then the chunk is
        // fetched (or reported revoked).
        for _ in 0..2 {
            let path = self.chunk_file(uid, key.index);
            match self.plan(key)? {
                Plan::Sparse(pin) => {
                    // Opening a file may read the disk (a directory, an inode).
                    crate::nowait::yield_once().await;
                    return match std::fs::File::open(&path) {
                        Ok(file) => Ok(Span::File {
                            file: Arc::new(file),
                            path,
                            _pin: pin,
                        }),
                        // No file: fine for bytes never written, a loss if any piece
                        // over this chunk was verified.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            if self.has_verified_pieces(key) {
                                self.chunk_damaged(key, "chunk file is missing");
                                return Err(StoreError::Revoked(key));
                            }
                            Ok(Span::Zeros)
                        }
                        Err(e) => Err(StoreError::io(&path, e)),
                    };
                }
                Plan::Local {
                    _pin,
                    hash,
                    len: chunk_len,
                    checked,
                    ..
                } => {
                    // Only a file kept open is used without waiting: opening one may
                    // read the disk (a directory, an inode).
                    if crate::nowait::active() && !self.kept_open(key) {
                        crate::nowait::yield_once().await;
                    }
                    let (file, stamp) = match self.open_checked(key, &path, checked) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            drop(_pin);
                            if !self.chunk_damaged(key, "chunk file is missing") {
                                return Err(StoreError::Revoked(key));
                            }
                            continue;
                        }
                        Err(e) => return Err(StoreError::io(&path, e)),
                    };
                    if checked == Some(stamp) {
                        return Ok(Span::File {
                            file,
                            path,
                            _pin: Some(_pin),
                        });
                    }
                    // Hashing a whole chunk blocks: not under a poll that must not.
                    crate::nowait::yield_once().await;
                    let Some(data) = self.check_whole(key, &path, &file, stamp, hash, chunk_len)?
                    else {
                        drop(_pin);
                        if !self.chunk_damaged(key, "chunk file does not match its hash") {
                            return Err(StoreError::Revoked(key));
                        }
                        continue;
                    };
                    return Ok(Span::Memory(slice_of(&data, offset, len)));
                }
                Plan::Fetch {
                    uid,
                    len: chunk_len,
                } => {
                    let bytes = self
                        .fetch_waiting(key, uid, chunk_len)
                        .await
                        .map_err(|error| StoreError::Fetch { key, error })?;
                    return Ok(Span::Memory(slice_of(&bytes, offset, len)));
                }
            }
        }
        Err(StoreError::Lost(key))
    }

    /// Whether a chunk's file is kept open (read a moment ago) and in the page cache: a
    /// cheap look, without opening a file, that spares such a chunk a load (see
    /// [`Store::load_ahead`]); a random reader's reads often pass for a short stream.
    pub(super) fn cached_now(&self, key: ChunkKey) -> bool {
        self.kept_file(key)
            .is_some_and(|f| crate::direct::cached_pages(&f).is_some_and(|n| n > 0))
    }

    fn kept_open(&self, key: ChunkKey) -> bool {
        self.kept_file(key).is_some()
    }

    /// The chunk's file if it is kept open (without refreshing its place among them).
    fn kept_file(&self, key: ChunkKey) -> Option<Arc<std::fs::File>> {
        self.open_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peek(&key)
            .cloned()
    }

    /// Has the kernel start reading a checked chunk's file into the page cache (opening
    /// it, and keeping it open, only as [`Store::open_checked`] allows). Blocking.
    fn advise_will_need(&self, key: ChunkKey, path: &std::path::Path, stamp: FileStamp) {
        if let Ok((file, _)) = self.open_checked(key, path, Some(stamp)) {
            files::will_need(&file);
        }
    }

    /// Opens a complete chunk's file, or takes it from the open files when its inode is
    /// still the one last checked (`checked`): the stamp is read from the open file, so a
    /// write to it shows, and a file replaced on disk is opened afresh. A file is kept
    /// open only when it needs no check.
    fn open_checked(
        &self,
        key: ChunkKey,
        path: &std::path::Path,
        checked: Option<FileStamp>,
    ) -> std::io::Result<(Arc<std::fs::File>, FileStamp)> {
        let kept = self
            .open_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(file) = kept {
            if let Ok(meta) = file.metadata() {
                let stamp = FileStamp::of(&meta);
                if checked == Some(stamp) {
                    return Ok((file, stamp));
                }
            }
            self.close_file(key);
        }
        let (file, stamp) = files::open_stamped(path)?;
        let file = Arc::new(file);
        if checked == Some(stamp) {
            self.open_files
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .put(key, Arc::clone(&file));
        }
        Ok((file, stamp))
    }

    /// Hashes a complete chunk's whole file against its recorded hash. If it matches,
    /// the file is marked checked and its bytes are kept in memory for the rest of their
    /// read, and returned; `None` if it does not match.
    fn check_whole(
        &self,
        key: ChunkKey,
        path: &std::path::Path,
        file: &std::fs::File,
        stamp: FileStamp,
        hash: [u8; 32],
        len: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let data = files::read_whole(file, len).map_err(|e| StoreError::io(path, e))?;
        if *blake3::hash(&data).as_bytes() != hash {
            return Ok(None);
        }
        self.mark_checked(key, hash, stamp);
        let data = Bytes::from(data);
        self.hot_put(key, data.clone());
        Ok(Some(data))
    }

    /// Starts the first-use check of a local chunk ahead of its reader (see
    /// [`Store::prefetch_chunk`]), unless one is running.
    fn check_ahead(
        self: &Arc<Self>,
        key: ChunkKey,
        uid: [u8; 16],
        pin: PinGuard,
        hash: [u8; 32],
        len: u64,
    ) {
        self.run_ahead(&[key], &self.check_lane, move |s| {
            let path = s.chunk_file(&uid, key.index);
            let damage = match files::open_stamped(&path) {
                Ok((file, stamp)) => match s.check_whole(key, &path, &file, stamp, hash, len) {
                    Ok(Some(_)) => None,
                    Ok(None) => Some("chunk file does not match its hash"),
                    Err(e) => {
                        tracing::debug!(chunk = %key, error = %e, "check ahead failed");
                        None
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("chunk file is missing"),
                Err(e) => {
                    tracing::debug!(chunk = %key, error = %e, "check ahead failed");
                    None
                }
            };
            drop(pin);
            if let Some(why) = damage {
                s.chunk_damaged(key, why);
            }
        });
    }

    /// Reads checked local chunks into memory ahead of a sequential reader: `first`
    /// and the other checked local chunks of its aligned group of [`LOAD_GROUP_CHUNKS`]
    /// that are neither in memory nor being read, in one batch past the page cache (see
    /// [`crate::direct::read_batch`]). A chunk's file is written in one go and the
    /// files of a torrent's chunks lie mostly in order on the disk, so the batch is read
    /// in a few large requests rather than one or two per chunk: on a virtual disk
    /// each request costs about as much as 1 MiB of transfer. The reader's requests are
    /// then answered from memory. A file that changed since its check (its stamp) is
    /// left to the reader, who hashes it; where direct reads are refused the kernel is
    /// asked to read the files ahead instead.
    fn load_ahead(self: &Arc<Self>, first: Load, uid: [u8; 16]) {
        let key = first.key;
        let group = key.index.0 - key.index.0 % LOAD_GROUP_CHUNKS;
        let chunks = self.geometry(key.torrent).map_or(0, |g| g.num_chunks());
        let mut loads = vec![first];
        for c in group..group.saturating_add(LOAD_GROUP_CHUNKS).min(chunks) {
            let k = ChunkKey::new(key.torrent, c);
            if c == key.index.0
                || self.loaded_get(k).is_some()
                || self.hot_get(k).is_some()
                || self.cached_now(k)
            {
                continue;
            }
            if let Ok(Plan::Local {
                _pin,
                len,
                checked: Some(stamp),
                ..
            }) = self.plan(k)
            {
                loads.push(Load {
                    key: k,
                    stamp,
                    len,
                    _pin,
                });
            }
        }
        loads.sort_by_key(|l| l.key.index.0);
        let keys: Vec<ChunkKey> = loads.iter().map(|l| l.key).collect();
        self.run_ahead(&keys, &self.load_lane, move |s| {
            let paths: Vec<_> = loads
                .iter()
                .map(|l| s.chunk_file(&uid, l.key.index))
                .collect();
            let got = match load_checked(&loads, &paths) {
                Ok(got) => got,
                Err(e) => {
                    tracing::debug!(chunk = %key, error = %e, "load ahead failed");
                    return;
                }
            };
            for ((load, path), bytes) in loads.iter().zip(&paths).zip(got) {
                match bytes {
                    Some(bytes) => s.loaded_put(load.key, bytes),
                    None => s.advise_will_need(load.key, path, load.stamp),
                }
            }
        });
    }

    /// Runs `work` for chunks `keys` on `lane` (see [`Lane`]) ahead of their reader. A
    /// reader of one of them waits for it (see [`Store::span`]) rather than read the
    /// same bytes a second time. Does nothing if work for the first is running already;
    /// others that are (asked for by another reader a moment before) are done twice,
    /// harmlessly.
    fn run_ahead(
        self: &Arc<Self>,
        keys: &[ChunkKey],
        lane: &Arc<Lane>,
        work: impl FnOnce(&Arc<Store>) + Send + 'static,
    ) {
        let mut checking = self.checking.lock().unwrap_or_else(|e| e.into_inner());
        if keys.first().is_none_or(|k| checking.contains_key(k)) {
            return;
        }
        let ours: Vec<ChunkKey> = keys
            .iter()
            .copied()
            .filter(|k| !checking.contains_key(k))
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = async move {
            let _ = rx.await;
        }
        .boxed()
        .shared();
        for &k in &ours {
            checking.insert(k, done.clone());
        }
        drop(checking);
        let store = Arc::clone(self);
        lane.push(&self.rt, move || {
            let _finished = Finished {
                store: Arc::clone(&store),
                keys: ours,
                _tx: tx,
            };
            work(&store);
        });
    }

    fn plan(self: &Arc<Self>, key: ChunkKey) -> Result<Plan, StoreError> {
        let mut st = self.lock_loaded(key.torrent)?;
        let t = st
            .torrents
            .get(&key.torrent)
            .ok_or(StoreError::UnknownTorrent(key.torrent))?;
        let uid = t.uid;
        let c = st.entry(key).ok_or(StoreError::OutOfRange {
            torrent: key.torrent,
            start: u64::from(key.index.0),
            end: u64::from(key.index.0),
        })?;
        let pin = |st: &mut super::CacheState| {
            st.pin(key);
            PinGuard {
                store: Arc::clone(self),
                key,
            }
        };
        match (c.present, c.state, c.hash) {
            (true, ChunkState::Partial, _) => Ok(Plan::Sparse(Some(pin(&mut st)))),
            (false, ChunkState::Partial, _) => Ok(Plan::Sparse(None)),
            (true, _, Some(hash)) => {
                let (len, checked) = (c.len, c.checked);
                Ok(Plan::Local {
                    _pin: pin(&mut st),
                    uid,
                    hash,
                    len,
                    checked,
                })
            }
            (false, ChunkState::Uploaded, _) => Ok(Plan::Fetch { uid, len: c.len }),
            _ => Err(StoreError::Lost(key)),
        }
    }

    fn has_verified_pieces(&self, key: ChunkKey) -> bool {
        let st = self.lock();
        st.torrents.get(&key.torrent).is_some_and(|t| {
            t.geometry
                .pieces_of_chunk(key.index)
                .any(|p| t.verified.contains(p))
        })
    }

    /// Records that a chunk's file, as stamped, matches `hash` (if it still is that chunk).
    pub(super) fn mark_checked(&self, key: ChunkKey, hash: [u8; 32], stamp: FileStamp) {
        let mut st = self.lock();
        if st
            .entry(key)
            .is_some_and(|c| c.present && c.hash == Some(hash))
        {
            st.set_checked(key, Some(stamp));
        }
    }

    /// Brings a chunk closer ahead of a read (read-ahead, peers' request patterns): an
    /// evicted one back from the remote, a local one into the page cache (the kernel
    /// starts reading its file now, so the read finds it there), or into memory, hashed,
    /// if it was not hashed since it was loaded (a reader then finds it checked and in
    /// memory, or waits for the check instead of hashing it again). Does nothing for
    /// chunks that are not complete. A chunk to be read `next` (a file's head on open)
    /// is fetched as if a reader waited: other fetches ahead hold back for it.
    /// The fetch starts before this returns (so fetches asked for in turn start in
    /// that order); the future returned, if any, is its outcome.
    pub fn prefetch_chunk(
        self: &Arc<Self>,
        key: ChunkKey,
        wanted: Wanted,
    ) -> Result<Option<impl std::future::Future<Output = Result<(), StoreError>>>, StoreError> {
        if self.hot_get(key).is_some() || self.loaded_get(key).is_some() {
            return Ok(None);
        }
        let (uid, len) = match self.plan(key)? {
            Plan::Fetch { uid, len } => (uid, len),
            // Not hashed since it was loaded: hash it now, off the reader's path.
            Plan::Local {
                _pin,
                uid,
                hash,
                len,
                checked: None,
            } => {
                self.check_ahead(key, uid, _pin, hash, len);
                return Ok(None);
            }
            Plan::Local {
                _pin,
                uid,
                len,
                checked: Some(stamp),
                ..
            } => {
                match wanted {
                    Wanted::Ahead if !self.cached_now(key) => self.load_ahead(
                        Load {
                            key,
                            stamp,
                            len,
                            _pin,
                        },
                        uid,
                    ),
                    // A file's head is read at once: a batch would make its first read
                    // wait for the whole group. Peers' reads stay in the page cache:
                    // many peers' extents would crowd a reader's out of memory. A file
                    // in the page cache is read from there.
                    _ => self.hint_ahead(key, uid, stamp, _pin),
                }
                return Ok(None);
            }
            Plan::Sparse(_) => return Ok(None),
        };
        let urgency = if wanted == Wanted::Next {
            Urgency::Demand
        } else {
            Urgency::Ahead
        };
        let fetch = self.fetch_start(key, uid, len, urgency);
        Ok(Some(async move {
            fetch
                .await
                .map(|_| ())
                .map_err(|error| StoreError::Fetch { key, error })
        }))
    }

    /// Has the kernel start reading a checked chunk's file ahead of its reader, on a
    /// blocking thread: opening the file and queueing its reads takes longer than the
    /// read that asks for them (a sequential reader's request waited on a window of
    /// these). The file is kept open for the read that follows (see
    /// [`Store::open_checked`]); the pin keeps the chunk from being evicted meanwhile.
    /// A chunk hinted a moment ago is not hinted again (read-ahead windows overlap at
    /// the chunks that straddle their edges).
    fn hint_ahead(self: &Arc<Self>, key: ChunkKey, uid: [u8; 16], stamp: FileStamp, pin: PinGuard) {
        {
            let mut hinted = self.hinted.lock().unwrap_or_else(|e| e.into_inner());
            if hinted.get(&key).is_some_and(|at| at.elapsed() < HINT_FRESH) {
                return;
            }
            hinted.put(key, Instant::now());
        }
        let store = Arc::clone(self);
        self.rt.spawn_blocking(move || {
            store.advise_will_need(key, &store.chunk_file(&uid, key.index), stamp);
            drop(pin);
        });
    }

    /// Brings the chunks of stream bytes a peer asked for closer, ahead of the read that
    /// follows (see [`Store::prefetch_chunk`]), with the rest of their aligned
    /// [`PEER_EXTENT_CHUNKS`] extent: the reads of a peer's queue then wait on fetches
    /// that overlap rather than on one fetch per read worker at a time. No more
    /// than [`PEER_FETCHES_AHEAD`] fetches run at once from here: each keeps its chunk in
    /// memory until its reader comes.
    pub fn prefetch_for_peer(self: &Arc<Self>, id: TorrentId, range: std::ops::Range<u64>) {
        if range.start >= range.end {
            return;
        }
        let Some(g) = self.geometry(id) else { return };
        // To the end of the extent: the rest of it is what the peer asks for next.
        let last = (range.end - 1) / CHUNK_LEN;
        let last =
            (last | (PEER_EXTENT_CHUNKS - 1)).min(u64::from(g.num_chunks()).saturating_sub(1));
        for c in range.start / CHUNK_LEN..=last {
            let busy = self
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len();
            if busy >= PEER_FETCHES_AHEAD {
                return;
            }
            if let Err(e) = self.prefetch_chunk(ChunkKey::new(id, c as u32), Wanted::Peer) {
                tracing::debug!(torrent = %id, chunk = c, error = %e, "no prefetch for a peer");
            }
        }
    }

    /// When the oldest remote fetch running for a chunk of `range` began, if any.
    pub fn fetching_since(&self, id: TorrentId, range: std::ops::Range<u64>) -> Option<Instant> {
        if range.start >= range.end {
            return None;
        }
        let inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let first = (range.start / CHUNK_LEN) as u32;
        let last = ((range.end - 1) / CHUNK_LEN) as u32;
        (first..=last)
            .filter_map(|c| inflight.get(&ChunkKey::new(id, c)).map(|f| f.since))
            .min()
    }

    /// Pins a chunk that is present locally (tests, tools). `None` when it is not.
    pub fn pin_present(self: &Arc<Self>, key: ChunkKey) -> Option<PinGuard> {
        let mut st = self.lock();
        if !st.entry(key)?.present {
            return None;
        }
        st.pin(key);
        Some(PinGuard {
            store: Arc::clone(self),
            key,
        })
    }

    fn hot_put(&self, key: ChunkKey, bytes: Bytes) {
        self.hot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, bytes);
    }

    fn loaded_put(&self, key: ChunkKey, bytes: Bytes) {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, bytes);
    }

    /// A chunk read ahead of its reader. Looked at without refreshing it: the chunks a
    /// sequential reader has passed leave first, the ones it has not reached stay.
    pub(super) fn loaded_get(&self, key: ChunkKey) -> Option<Bytes> {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peek(&key)
            .cloned()
    }

    pub(super) fn hot_get(&self, key: ChunkKey) -> Option<Bytes> {
        self.hot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
    }

    /// Joins the fetch of uploaded chunk `key` running now, or starts one: one fetch
    /// for all who want the chunk now.
    fn fetch_start(
        self: &Arc<Self>,
        key: ChunkKey,
        uid: [u8; 16],
        len: u64,
        urgency: Urgency,
    ) -> SharedFetch {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = inflight.get(&key) {
            if urgency == Urgency::Demand {
                f.wanted.notify_one();
            }
            return f.fetch.clone();
        }
        let wanted = Arc::new(tokio::sync::Notify::new());
        let attempt = self.attempt(key, uid, len, urgency, &wanted);
        let id = self.next_fetch_id.fetch_add(1, Ordering::Relaxed);
        // Settled while `inflight` is held: its task cannot forget the entry before it
        // is inserted.
        let fetch = self.settle(key, id, attempt);
        inflight.insert(
            key,
            Inflight {
                since: Instant::now(),
                id,
                fetch: fetch.clone(),
                wanted,
                hedges: 0,
            },
        );
        fetch
    }

    /// One attempt at bringing chunk `key` back, running as a task of its own.
    fn attempt(
        self: &Arc<Self>,
        key: ChunkKey,
        uid: [u8; 16],
        len: u64,
        urgency: Urgency,
        wanted: &Arc<tokio::sync::Notify>,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        // Taken before the identity is read: a change after it keeps this fetch's bytes
        // out of the cache (they still serve this read: they are the bytes it asked for).
        let epoch = self.remote_epoch.load(Ordering::SeqCst);
        let store = Arc::clone(self);
        let go = Arc::clone(wanted);
        // Counted before the task runs: a fetch ahead asked for just after must see it.
        let demand = (urgency == Urgency::Demand).then(|| DemandFetch::start(self));
        let task = self.rt.spawn(async move {
            if demand.is_none() {
                store.await_turn(&go).await;
            }
            // The only reader waiting on a fetch (this one is counted).
            let parts = if demand.is_some() && *store.demand_fetches.borrow() <= 1 {
                IDLE_DEMAND_PARTS
            } else {
                1
            };
            // The identity is looked up here, not in the caller (a FUSE request).
            let r = match store.remote_identity(key, uid, len) {
                Ok(chunk) => store.fetch_one(&chunk, epoch, parts).await,
                Err(e) => Err(e),
            };
            drop(demand);
            r
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(FetchError::Unavailable(format!("fetch task: {e}"))))
        }
        .boxed()
    }

    /// The outcome of a fetch's attempts, shared by its readers. It runs as a task, so
    /// the `inflight` entry numbered `id` is forgotten when it settles even if nobody
    /// waits for it any more (a later reader then starts afresh).
    fn settle(
        self: &Arc<Self>,
        key: ChunkKey,
        id: u64,
        outcome: BoxFuture<'static, Result<Bytes, FetchError>>,
    ) -> SharedFetch {
        let store = Arc::clone(self);
        let task = self.rt.spawn(async move {
            let r = outcome.await;
            let mut inflight = store.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if inflight.get(&key).is_some_and(|f| f.id == id) {
                inflight.remove(&key);
            }
            r
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(FetchError::Unavailable(format!("fetch task: {e}"))))
        }
        .boxed()
        .shared()
    }

    /// A reader's wait for an evicted chunk. If the fetch it joins takes far longer than
    /// fetches take (a request the remote never answers, or a retry asleep in its backoff
    /// after the remote came back), the reader starts another attempt alongside it and
    /// takes whichever brings the chunk first: readers are not failed for as long as a
    /// dead request takes to time out.
    async fn fetch_waiting(
        self: &Arc<Self>,
        key: ChunkKey,
        uid: [u8; 16],
        len: u64,
    ) -> Result<Bytes, FetchError> {
        let mut fetch = self.fetch_start(key, uid, len, Urgency::Demand);
        // The timer below needs a runtime: not under a poll that must not block.
        crate::nowait::yield_once().await;
        loop {
            match tokio::time::timeout(self.hedge_after(), fetch.clone()).await {
                Ok(r) => return r,
                Err(_) => fetch = self.hedge(key, uid, len, &fetch),
            }
        }
    }

    /// How long a reader waits on one attempt before it starts another: many times a
    /// typical fetch, within bounds (a slow link's fetches are slow, not dead).
    fn hedge_after(&self) -> Duration {
        let typical = Duration::from_micros(self.typical_fetch_us.load(Ordering::Relaxed));
        let floor = Duration::from_millis(self.hedge_floor_ms.load(Ordering::Relaxed));
        (typical * HEDGE_FACTOR).clamp(floor, HEDGE_CEILING.max(floor))
    }

    /// Starts one more attempt at the fetch of `key` if its latest began longer than
    /// [`Store::hedge_after`] ago (and it has not been hedged too often); returns the
    /// fetch to wait on: the first of its attempts to succeed, or the last error.
    fn hedge(
        self: &Arc<Self>,
        key: ChunkKey,
        uid: [u8; 16],
        len: u64,
        current: &SharedFetch,
    ) -> SharedFetch {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let Some(f) = inflight.get_mut(&key) else {
            // Settled meanwhile: `current` has its outcome.
            return current.clone();
        };
        let waited = f.since.elapsed();
        if f.hedges >= MAX_HEDGES || waited < self.hedge_after() {
            return f.fetch.clone();
        }
        tracing::info!(chunk = %key, waited_ms = waited.as_millis() as u64, "a fetch is taking long; trying again alongside it");
        let attempt = self.attempt(key, uid, len, Urgency::Demand, &f.wanted);
        let earlier = f.fetch.clone().boxed();
        let either = async move {
            futures::future::select_ok([earlier, attempt])
                .await
                .map(|(bytes, _)| bytes)
        }
        .boxed();
        let id = self.next_fetch_id.fetch_add(1, Ordering::Relaxed);
        let fetch = self.settle(key, id, either);
        *f = Inflight {
            since: Instant::now(),
            id,
            fetch: fetch.clone(),
            wanted: Arc::clone(&f.wanted),
            hedges: f.hedges + 1,
        };
        fetch
    }

    /// An uploaded chunk's identity from the catalog (not kept in memory: see cache).
    fn remote_identity(
        &self,
        key: ChunkKey,
        uid: [u8; 16],
        len: u64,
    ) -> Result<RemoteChunk, FetchError> {
        let rec = self
            .catalog
            .chunk(key)
            .map_err(|e| FetchError::Unavailable(format!("catalog: {e}")))?;
        match rec {
            Some(r) if r.state == ChunkState::Uploaded => match (r.hash, r.object_id) {
                (Some(hash), Some(object_id)) => Ok(RemoteChunk {
                    key,
                    torrent_uid: uid,
                    len,
                    hash,
                    object_id,
                }),
                _ => Err(FetchError::Integrity(format!(
                    "chunk {key} is recorded uploaded without its identity"
                ))),
            },
            _ => Err(FetchError::NotFound),
        }
    }

    /// A fetch ahead of the readers waits while fetches for waiting readers run (they
    /// share the link and the cores), until a reader wants it too, or for a bounded time
    /// so that a steady stream of demand cannot starve it.
    async fn await_turn(&self, wanted: &tokio::sync::Notify) {
        let mut demand = self.demand_fetches.subscribe();
        let idle = demand.wait_for(|&n| n == 0);
        tokio::select! {
            _ = idle => {}
            _ = wanted.notified() => {}
            _ = tokio::time::sleep(AHEAD_MAX_WAIT) => {}
        }
    }

    async fn fetch_one(
        self: &Arc<Self>,
        chunk: &RemoteChunk,
        epoch: u64,
        parts: usize,
    ) -> Result<Bytes, FetchError> {
        let source = self.source.get().ok_or(FetchError::NoRemote)?;
        let c = &self.counters;
        let began = Instant::now();
        let data = match source.fetch_parts(chunk, parts).await {
            Ok(d) => d,
            Err(e) => {
                let counter = match e {
                    FetchError::Integrity(_) => &c.remote_integrity_errors,
                    FetchError::NotFound => &c.remote_missing,
                    FetchError::Unavailable(_) | FetchError::NoRemote => &c.remote_unavailable,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        if let Err(e) = chunk.check(&data) {
            tracing::error!(chunk = %chunk.key, "remote chunk does not match its recorded hash");
            c.remote_integrity_errors.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        c.fetched_chunks.fetch_add(1, Ordering::Relaxed);
        let took = began.elapsed();
        tracing::debug!(chunk = %chunk.key, parts, took_us = took.as_micros() as u64, "fetched");
        self.note_fetch_took(took);
        let bytes = data;
        self.hot_put(chunk.key, bytes.clone());
        // The readers are served from memory now; the cache copy is written behind them,
        // at background priority unless too many wait already.
        let store = Arc::clone(self);
        let (chunk, b) = (chunk.clone(), bytes.clone());
        let behind = Behind::count(&self.installs_behind);
        if behind.waiting <= super::INSTALLS_BEHIND {
            self.rt.spawn(crate::background::run(move || {
                store.install_fetched(&chunk, &b, epoch);
                drop(behind);
            }));
        } else {
            drop(behind);
            self.rt
                .spawn_blocking(move || store.install_fetched(&chunk, &b, epoch));
        }
        Ok(bytes)
    }

    /// Folds one successful fetch's duration into the typical one (a moving average
    /// that weighs the latest an eighth).
    fn note_fetch_took(&self, took: Duration) {
        let took = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let _ = self
            .typical_fetch_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(old - old / 8 + took / 8)
            });
    }

    /// Sets the least time a reader waits on a fetch before it tries again alongside it.
    #[cfg(test)]
    pub(super) fn set_hedge_floor(&self, floor: Duration) {
        self.hedge_floor_ms
            .store(floor.as_millis() as u64, Ordering::Relaxed);
    }

    /// Writes a fetched chunk into the cache directory (durably, atomically) and makes
    /// it present, unless the chunk changed meanwhile (torrent removed, chunk revoked).
    fn install_fetched(&self, chunk: &RemoteChunk, data: &[u8], epoch: u64) {
        let path = self.chunk_file(&chunk.torrent_uid, chunk.key.index);
        let stamp = match files::write_whole(&path, data) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(chunk = %chunk.key, error = %e, "could not keep a fetched chunk in the cache");
                return;
            }
        };
        {
            let mut st = self.lock();
            let same = self.remote_epoch.load(Ordering::SeqCst) == epoch;
            let wanted = st
                .entry(chunk.key)
                .map(|c| (c.present, same && c.state == ChunkState::Uploaded));
            match wanted {
                Some((false, true)) => {
                    st.set_fetched(chunk.key, chunk.hash, chunk.object_id.clone(), stamp);
                }
                Some((true, true)) => {}
                _ => {
                    let _ = files::remove(&path);
                }
            }
        }
        self.evict_to_limit();
    }

    /// A chunk's local bytes are gone or wrong. The file is dropped; if the chunk is in
    /// the remote it will simply be fetched again (returns true); otherwise every
    /// verified piece over it is revoked — in memory and in the catalog — so libtorrent
    /// downloads them again, and the daemon is told (returns false).
    pub(crate) fn chunk_damaged(&self, key: ChunkKey, why: &str) -> bool {
        let _commit = self.commit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let revoked = {
            let mut st = self.lock();
            let Some(t) = st.torrents.get(&key.torrent) else {
                return false;
            };
            let (uid, g) = (t.uid, t.geometry);
            let Some(c) = st.entry(key) else {
                return false;
            };
            if c.present {
                self.close_file(key);
                let _ = files::remove(&self.chunk_file(&uid, key.index));
                st.set_present(key, false);
                self.counters
                    .damaged_local_chunks
                    .fetch_add(1, Ordering::Relaxed);
            }
            if c.state == ChunkState::Uploaded {
                tracing::warn!(chunk = %key, reason = why, "local chunk damaged; fetching it again from the remote");
                return true;
            }
            let Some(t) = st.torrents.get_mut(&key.torrent) else {
                return false;
            };
            let pieces: Vec<u32> = g
                .pieces_of_chunk(key.index)
                .filter(|&p| t.verified.contains(p))
                .collect();
            for &p in &pieces {
                t.verified.remove(p);
                t.durable.remove(p);
            }
            let mut chunks: Vec<u32> = pieces
                .iter()
                .flat_map(|&p| g.chunks_of_piece(PieceIndex(p)))
                .chain([key.index.0])
                .filter(|&ch| t.state(ch) == ChunkState::Complete)
                .collect();
            chunks.sort_unstable();
            chunks.dedup();
            for &ch in &chunks {
                st.reset_chunk(ChunkKey::new(key.torrent, ch));
            }
            (pieces, chunks)
        };
        let (pieces, chunks) = revoked;
        if pieces.is_empty() {
            return false;
        }
        self.remote_epoch.fetch_add(1, Ordering::SeqCst);
        self.counters.revoked_chunks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(chunk = %key, reason = why, pieces = pieces.len(), "local chunk damaged and not in the remote; its pieces are downloaded again");
        if let Err(e) = self.catalog.unverify(key.torrent, &pieces, &chunks) {
            tracing::error!(chunk = %key, error = %e, "could not record revoked pieces");
        }
        let _ = self.revoked_tx.send(key.torrent);
        false
    }

    /// Reads stream bytes from the local chunk files as they are, checking nothing and
    /// changing nothing (for `verify`, which judges them against the torrent's own piece
    /// hashes and reports instead of repairing). A present chunk whose file is gone reads
    /// as zeros (damage, for the hash to find); one not local (evicted meanwhile) is
    /// [`StoreError::NotLocal`].
    pub fn read_local_unchecked(
        self: &Arc<Self>,
        id: TorrentId,
        stream_offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        let end = stream_offset + buf.len() as u64;
        let (uid, geometry) = self.torrent_geometry(id, stream_offset, end)?;
        for span in geometry.chunk_spans(stream_offset..end) {
            let key = ChunkKey {
                torrent: id,
                index: span.chunk,
            };
            // Pinned for the read: a chunk evicted meanwhile must not read as zeros.
            let Some(_pin) = self.pin_present(key) else {
                return Err(StoreError::NotLocal(key));
            };
            let lo = (span.stream_offset - stream_offset) as usize;
            let out = &mut buf[lo..lo + span.len as usize];
            let path = self.chunk_file(&uid, span.chunk);
            if !files::read_at_existing(&path, span.offset_in_chunk, out)
                .map_err(|e| StoreError::io(&path, e))?
            {
                out.fill(0);
            }
        }
        Ok(())
    }

    /// Re-hashes a chunk's local copy against its recorded hash (for `verify`). `None`
    /// when there is nothing to check (no local copy, or the chunk is not complete yet).
    pub fn check_local(self: &Arc<Self>, key: ChunkKey) -> Result<Option<bool>, StoreError> {
        let (uid, len, hash, _pin) = {
            let mut st = self.lock_loaded(key.torrent)?;
            let Some(uid) = st.torrents.get(&key.torrent).map(|t| t.uid) else {
                return Err(StoreError::UnknownTorrent(key.torrent));
            };
            let Some(c) = st.entry(key) else {
                return Ok(None);
            };
            let (true, Some(hash)) = (c.present, c.hash) else {
                return Ok(None);
            };
            let len = c.len;
            st.pin(key);
            let pin = PinGuard {
                store: Arc::clone(self),
                key,
            };
            (uid, len, hash, pin)
        };
        let path = self.chunk_file(&uid, key.index);
        let (file, stamp) = match files::open_stamped(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(false)),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let mut data = vec![0u8; len as usize];
        files::read_file_at(&file, 0, &mut data).map_err(|e| StoreError::io(&path, e))?;
        let ok = *blake3::hash(&data).as_bytes() == hash;
        if ok {
            self.mark_checked(key, hash, stamp);
        }
        Ok(Some(ok))
    }

    /// Identity of an uploaded chunk (for `verify`), `None` if it is not in the remote.
    pub fn remote_chunk(&self, key: ChunkKey) -> Option<RemoteChunk> {
        let (uid, len) = {
            let st = self.lock_loaded(key.torrent).ok()?;
            let uid = st.torrents.get(&key.torrent)?.uid;
            let c = st.entry(key)?;
            if c.state != ChunkState::Uploaded {
                return None;
            }
            (uid, c.len)
        };
        self.remote_identity(key, uid, len).ok()
    }
}

/// Ends work run ahead (see [`Store::run_ahead`]), however it ends: its chunks leave
/// `checking`, then their readers wake (the sender drops after this).
struct Finished {
    store: Arc<Store>,
    keys: Vec<ChunkKey>,
    _tx: tokio::sync::oneshot::Sender<()>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let mut checking = self
            .store
            .checking
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            checking.remove(k);
        }
    }
}

/// A checked local chunk to read into memory, pinned meanwhile.
struct Load {
    key: ChunkKey,
    stamp: FileStamp,
    len: u64,
    _pin: PinGuard,
}

/// The chunk files' bytes read past the page cache in one batch, each only if its file
/// is still the one its check vouched for (its stamp) before and after the read; `None`
/// for one that is not, one the page cache holds already (a chunk just fetched or
/// downloaded), or where direct reads cannot be done.
fn load_checked(
    loads: &[Load],
    paths: &[std::path::PathBuf],
) -> std::io::Result<Vec<Option<Bytes>>> {
    let unchanged = |file: &std::fs::File, stamp: FileStamp| {
        file.metadata()
            .map(|m| FileStamp::of(&m) == stamp)
            .unwrap_or(false)
    };
    let mut opened = Vec::with_capacity(loads.len());
    for (load, path) in loads.iter().zip(paths) {
        let file = match crate::direct::open(path)? {
            Some(file)
                if unchanged(&file, load.stamp)
                    && load.stamp.len <= load.len
                    && crate::direct::cached_pages(&file).unwrap_or(0) == 0 =>
            {
                Some(file)
            }
            _ => None,
        };
        opened.push(file);
    }
    let which: Vec<usize> = (0..loads.len()).filter(|&i| opened[i].is_some()).collect();
    let wants: Vec<crate::direct::Want> = which
        .iter()
        .filter_map(|&i| {
            Some(crate::direct::Want {
                file: opened[i].as_ref()?,
                len: usize::try_from(loads[i].len).ok()?,
            })
        })
        .collect();
    let mut out: Vec<Option<Bytes>> = (0..loads.len()).map(|_| None).collect();
    if wants.len() != which.len() {
        return Ok(out);
    }
    let got = crate::direct::read_batch(&wants, CHUNK_LEN as usize)?;
    for (&i, got) in which.iter().zip(got) {
        let (Some((bytes, file_len)), Some(file)) = (got, &opened[i]) else {
            continue;
        };
        let stamp = loads[i].stamp;
        if file_len as u64 == stamp.len && unchanged(file, stamp) {
            out[i] = Some(bytes);
        }
    }
    Ok(out)
}

/// `len` bytes of a chunk held in memory from `offset`: a slice when the chunk holds
/// them all (always, for a chunk of the length recorded), zero-padded otherwise.
fn slice_of(chunk: &Bytes, offset: u64, len: usize) -> Bytes {
    let start = (offset as usize).min(chunk.len());
    let end = (start + len).min(chunk.len());
    if end - start == len {
        return chunk.slice(start..end);
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&chunk[start..end]);
    out.resize(len, 0);
    Bytes::from(out)
}

/// One fetched chunk counted among those waiting to be written into the cache, until
/// dropped (also if its job never runs).
struct Behind {
    count: Arc<std::sync::atomic::AtomicUsize>,
    /// How many wait, this one included.
    waiting: usize,
}

impl Behind {
    fn count(count: &Arc<std::sync::atomic::AtomicUsize>) -> Behind {
        let waiting = count.fetch_add(1, Ordering::SeqCst) + 1;
        Behind {
            count: Arc::clone(count),
            waiting,
        }
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}
