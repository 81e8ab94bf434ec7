//! The chunk store: the one place torrent bytes live on this machine.
//!
//! libtorrent writes blocks into it and reads pieces back (to hash and to seed); the
//! filesystem reads verified bytes from it; the uploader takes complete chunks out of it
//! to the remote. Chunk files are plaintext and bounded by an LRU limit over *evictable*
//! chunks only (uploaded, not pinned by a seeding torrent, not in use by a read); a chunk
//! that is not safe in the remote never leaves the cache, so the cache may exceed its
//! limit rather than lose data.
//!
//! Durability order: block bytes are written in place; when pieces are verified, the
//! committer fsyncs the chunk files they touch and only then records the pieces (and the
//! chunks they complete) in the catalog in one transaction. After a crash, recovery
//! re-derives the in-memory view from the catalog and the files actually present.
//!
//! Lock order: `commit_lock` → `state`; `inflight` is never held while taking `state`.
//! No lock is held across an await or a remote call.

mod cache;
mod files;
mod recovery;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::catalog::{Catalog, CatalogError, Completed};
use crate::model::{ChunkIndex, ChunkKey, ChunkState, Geometry, PieceIndex, TorrentId};

use cache::CacheState;
pub use cache::{CacheStats, ChunkEntry};

/// Where a torrent's chunk files live under a cache root (for tools that inspect the
/// cache without opening a store).
pub fn torrent_cache_dir(root: &Path, uid: &[u8; 16]) -> PathBuf {
    files::torrent_dir(root, uid)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk cache I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unknown torrent {0}")]
    UnknownTorrent(TorrentId),
    #[error("range {start}..{end} is outside torrent {torrent}")]
    OutOfRange {
        torrent: TorrentId,
        start: u64,
        end: u64,
    },
    #[error("pieces of torrent {torrent} are not downloaded yet (first missing: {})", .missing.first().map(|p| p.0).unwrap_or(0))]
    NotVerified {
        torrent: TorrentId,
        missing: Vec<PieceIndex>,
    },
    #[error("chunk {0} is neither cached nor in the remote")]
    Lost(ChunkKey),
    #[error("fetching chunk {key} from the remote: {error}")]
    Fetch { key: ChunkKey, error: FetchError },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl StoreError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Why a chunk could not be brought back from the remote. Cloneable: one fetch's
/// outcome is shared by every reader that waited for it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    #[error("object missing from the remote")]
    NotFound,
    #[error("integrity check failed: {0}")]
    Integrity(String),
    #[error("remote unavailable: {0}")]
    Unavailable(String),
    #[error("no remote configured")]
    NoRemote,
}

/// Everything needed to fetch and authenticate one chunk from the remote.
#[derive(Clone, Debug)]
pub struct RemoteChunk {
    pub key: ChunkKey,
    pub torrent_uid: [u8; 16],
    pub len: u64,
    pub hash: [u8; 32],
    pub object_id: String,
}

/// Where evicted chunks come back from (the tiering fetcher: remote GET, decrypt,
/// verify). Returns the chunk's verified plaintext.
#[async_trait]
pub trait ChunkSource: Send + Sync + 'static {
    async fn fetch(&self, chunk: &RemoteChunk) -> Result<Vec<u8>, FetchError>;
}

/// Per-torrent counters for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TorrentStats {
    pub pieces_total: u32,
    pub pieces_verified: u32,
    pub chunks_total: u32,
    pub chunks_local: u32,
    pub chunks_complete: u32,
    pub chunks_uploaded: u32,
    pub bytes_verified: u64,
}

type SharedFetch = Shared<BoxFuture<'static, Result<(), FetchError>>>;

pub struct Store {
    root: PathBuf,
    catalog: Arc<Catalog>,
    rt: tokio::runtime::Handle,
    state: Mutex<CacheState>,
    limit_bytes: std::sync::atomic::AtomicU64,
    source: OnceLock<Arc<dyn ChunkSource>>,
    inflight: Mutex<HashMap<ChunkKey, SharedFetch>>,
    /// Pieces verified in memory, waiting for the committer to make them durable.
    pending: Mutex<Vec<(TorrentId, u32)>>,
    pending_cv: Condvar,
    commit_lock: Mutex<()>,
    /// Complete chunks waiting for the uploader.
    uploads: Mutex<VecDeque<ChunkKey>>,
    upload_notify: tokio::sync::Notify,
    /// Bumped whenever pieces are verified; readers waiting for a download watch it.
    verified_tx: tokio::sync::watch::Sender<u64>,
    shutdown: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

/// Keeps a chunk in the cache while a read uses it.
pub struct PinGuard {
    store: Arc<Store>,
    key: ChunkKey,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.store.lock().unpin(self.key);
    }
}

impl Store {
    /// Opens the cache under `root`, reconciling it with the catalog (orphan files
    /// removed, lost chunks reverted so they are downloaded again), and starts the
    /// committer thread. Reads that must fetch from the remote run on `rt`.
    pub fn open(
        root: &Path,
        catalog: Arc<Catalog>,
        limit_bytes: u64,
        rt: tokio::runtime::Handle,
    ) -> Result<Arc<Store>, StoreError> {
        std::fs::create_dir_all(root).map_err(|e| StoreError::io(root, e))?;
        let state = recovery::recover(root, &catalog)?;
        let uploads: VecDeque<ChunkKey> = state
            .torrents
            .iter()
            .flat_map(|(id, t)| {
                t.chunks
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.state == ChunkState::Complete)
                    .map(move |(i, _)| ChunkKey::new(*id, i as u32))
            })
            .collect();
        let store = Arc::new(Store {
            root: root.to_owned(),
            catalog,
            rt,
            state: Mutex::new(state),
            limit_bytes: limit_bytes.into(),
            source: OnceLock::new(),
            inflight: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            pending_cv: Condvar::new(),
            commit_lock: Mutex::new(()),
            uploads: Mutex::new(uploads),
            upload_notify: tokio::sync::Notify::new(),
            verified_tx: tokio::sync::watch::channel(0).0,
            shutdown: false.into(),
        });
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("bae-committer".into())
            .spawn(move || committer(weak))
            .map_err(|e| StoreError::io(root, e))?;
        Ok(store)
    }

    /// Connects the remote fetch path (set once, by tiering).
    pub fn set_source(&self, source: Arc<dyn ChunkSource>) {
        let _ = self.source.set(source);
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // The cache state has no invariant a panic can break half-way through a method
        // that matters more than staying available; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads (or reloads) a torrent whose layout is in the catalog into the cache view.
    pub fn register_torrent(&self, id: TorrentId) -> Result<Geometry, StoreError> {
        if let Some(t) = self.lock().torrents.get(&id) {
            return Ok(t.geometry);
        }
        let entry = recovery::load_torrent(&self.root, &self.catalog, id)?
            .ok_or(StoreError::UnknownTorrent(id))?;
        let g = entry.geometry;
        let mut st = self.lock();
        if !st.torrents.contains_key(&id) {
            st.insert_torrent(id, entry);
        }
        Ok(g)
    }

    pub fn geometry(&self, id: TorrentId) -> Option<Geometry> {
        self.lock().torrents.get(&id).map(|t| t.geometry)
    }

    /// Verified-piece bitfield of a torrent (libtorrent's have-pieces at add time).
    pub fn verified_pieces(&self, id: TorrentId) -> Result<Vec<bool>, StoreError> {
        let st = self.lock();
        let t = st.torrents.get(&id).ok_or(StoreError::UnknownTorrent(id))?;
        Ok(t.verified.clone())
    }

    pub fn is_complete(&self, id: TorrentId) -> bool {
        let st = self.lock();
        st.torrents
            .get(&id)
            .is_some_and(|t| t.verified_count as usize == t.verified.len())
    }

    fn chunk_file(&self, uid: &[u8; 16], index: ChunkIndex) -> PathBuf {
        files::chunk_path(&self.root, uid, index.0)
    }

    /// Positioned write of stream bytes (a block from libtorrent). Blocking.
    pub fn write(&self, id: TorrentId, stream_offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let end = stream_offset + data.len() as u64;
        let (uid, geometry) = self.torrent_geometry(id, stream_offset, end)?;
        for span in geometry.chunk_spans(stream_offset..end) {
            let key = ChunkKey {
                torrent: id,
                index: span.chunk,
            };
            {
                let mut st = self.lock();
                let Some(c) = st.entry(key) else {
                    return Err(StoreError::UnknownTorrent(id));
                };
                if !c.present && c.state != ChunkState::Partial {
                    // Every piece of this chunk is verified and it lives in the remote:
                    // writing part of it locally would leave holes that read as zeros.
                    tracing::debug!(%key, "ignoring write to an evicted complete chunk");
                    continue;
                }
                st.set_present(key, true);
            }
            let path = self.chunk_file(&uid, span.chunk);
            let lo = (span.stream_offset - stream_offset) as usize;
            files::write_at(
                &path,
                span.offset_in_chunk,
                &data[lo..lo + span.len as usize],
            )
            .map_err(|e| StoreError::io(&path, e))?;
        }
        Ok(())
    }

    fn torrent_geometry(
        &self,
        id: TorrentId,
        start: u64,
        end: u64,
    ) -> Result<([u8; 16], Geometry), StoreError> {
        let st = self.lock();
        let t = st.torrents.get(&id).ok_or(StoreError::UnknownTorrent(id))?;
        if end > t.geometry.total_len() || start > end {
            return Err(StoreError::OutOfRange {
                torrent: id,
                start,
                end,
            });
        }
        Ok((t.uid, t.geometry))
    }

    /// Reads raw stream bytes for libtorrent (hashing, seeding): whatever is stored,
    /// verified or not. An evicted chunk is fetched from the remote first. Blocking:
    /// call from a worker thread, never from inside the tokio runtime.
    pub fn read_raw_blocking(
        self: &Arc<Self>,
        id: TorrentId,
        stream_offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        // A peer's request is worthless after this long; it also bounds how long a
        // session shutdown can wait for a read stuck on the remote.
        const PEER_READ_TIMEOUT: Duration = Duration::from_secs(30);
        let read = self.read_into(id, stream_offset, buf, false);
        self.rt
            .clone()
            .block_on(async { tokio::time::timeout(PEER_READ_TIMEOUT, read).await })
            .unwrap_or_else(|_| {
                Err(StoreError::Fetch {
                    key: ChunkKey::new(id, (stream_offset / crate::model::CHUNK_LEN) as u32),
                    error: FetchError::Unavailable("timed out".into()),
                })
            })
    }

    /// Reads verified stream bytes (for the filesystem). Fails with `NotVerified` when a
    /// piece of the range is not downloaded yet.
    pub async fn read_verified(
        self: &Arc<Self>,
        id: TorrentId,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let len = range.end.saturating_sub(range.start) as usize;
        let mut buf = vec![0u8; len];
        self.read_into(id, range.start, &mut buf, true).await?;
        Ok(Bytes::from(buf))
    }

    /// Pieces overlapping a stream range that are not verified yet.
    pub fn missing_pieces(
        &self,
        id: TorrentId,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<PieceIndex>, StoreError> {
        let st = self.lock();
        let t = st.torrents.get(&id).ok_or(StoreError::UnknownTorrent(id))?;
        let g = t.geometry;
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        let first = (range.start / g.piece_len()) as u32;
        let last = ((range.end - 1).min(g.total_len().saturating_sub(1)) / g.piece_len()) as u32;
        Ok((first..=last)
            .filter(|&p| !t.verified.get(p as usize).copied().unwrap_or(false))
            .map(PieceIndex)
            .collect())
    }

    /// A receiver that changes whenever pieces are verified (for readers that wait).
    pub fn watch_verified(&self) -> tokio::sync::watch::Receiver<u64> {
        self.verified_tx.subscribe()
    }

    async fn read_into(
        self: &Arc<Self>,
        id: TorrentId,
        stream_offset: u64,
        buf: &mut [u8],
        verified_only: bool,
    ) -> Result<(), StoreError> {
        let end = stream_offset + buf.len() as u64;
        let (uid, geometry) = self.torrent_geometry(id, stream_offset, end)?;
        if verified_only {
            let missing = self.missing_pieces(id, stream_offset..end)?;
            if !missing.is_empty() {
                return Err(StoreError::NotVerified {
                    torrent: id,
                    missing,
                });
            }
        }
        for span in geometry.chunk_spans(stream_offset..end) {
            let key = ChunkKey {
                torrent: id,
                index: span.chunk,
            };
            let lo = (span.stream_offset - stream_offset) as usize;
            let out = &mut buf[lo..lo + span.len as usize];
            let Some(_guard) = self.pin_local(key).await? else {
                // Never written and not in the remote: unwritten bytes are zeros.
                out.fill(0);
                continue;
            };
            let path = self.chunk_file(&uid, span.chunk);
            files::read_at(&path, span.offset_in_chunk, out)
                .map_err(|e| StoreError::io(&path, e))?;
        }
        Ok(())
    }

    /// Pins a chunk that is present locally, fetching it from the remote first when it
    /// was evicted (single-flight). `None` for a partial chunk with no local file.
    pub async fn pin_local(
        self: &Arc<Self>,
        key: ChunkKey,
    ) -> Result<Option<PinGuard>, StoreError> {
        loop {
            let remote = {
                let mut st = self.lock();
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
                if c.present {
                    st.pin(key);
                    return Ok(Some(PinGuard {
                        store: Arc::clone(self),
                        key,
                    }));
                }
                match (c.state, &c.hash, &c.object_id) {
                    (ChunkState::Uploaded, Some(hash), Some(oid)) => RemoteChunk {
                        key,
                        torrent_uid: uid,
                        len: c.len,
                        hash: *hash,
                        object_id: oid.clone(),
                    },
                    (ChunkState::Partial, _, _) => return Ok(None),
                    _ => return Err(StoreError::Lost(key)),
                }
            };
            self.fetch_shared(remote)
                .await
                .map_err(|error| StoreError::Fetch { key, error })?;
            // Loop: pin it now (or fetch again if it was evicted in between).
        }
    }

    fn fetch_shared(self: &Arc<Self>, chunk: RemoteChunk) -> SharedFetch {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = inflight.get(&chunk.key) {
            return f.clone();
        }
        let key = chunk.key;
        let store = Arc::clone(self);
        let task = self.rt.spawn(async move {
            let r = store.fetch_one(&chunk).await;
            store
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&chunk.key);
            r
        });
        let fut = async move {
            task.await
                .unwrap_or_else(|e| Err(FetchError::Unavailable(format!("fetch task: {e}"))))
        }
        .boxed()
        .shared();
        inflight.insert(key, fut.clone());
        fut
    }

    async fn fetch_one(&self, chunk: &RemoteChunk) -> Result<(), FetchError> {
        let source = self.source.get().ok_or(FetchError::NoRemote)?;
        let data = source.fetch(chunk).await?;
        if data.len() as u64 != chunk.len {
            return Err(FetchError::Integrity(format!(
                "chunk {} has {} bytes, expected {}",
                chunk.key,
                data.len(),
                chunk.len
            )));
        }
        let path = self.chunk_file(&chunk.torrent_uid, chunk.key.index);
        let write = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || files::write_whole(&path, &data))
        };
        write
            .await
            .map_err(|e| FetchError::Unavailable(e.to_string()))?
            .map_err(|e| FetchError::Unavailable(format!("writing {}: {e}", path.display())))?;
        {
            let mut st = self.lock();
            if !st.set_present(chunk.key, true) {
                // The torrent was removed while we fetched.
                let _ = files::remove(&path);
            }
        }
        self.evict_to_limit();
        Ok(())
    }

    /// libtorrent verified these pieces. Updates the in-memory view at once and queues
    /// them for the committer, which makes them durable. Never blocks on I/O.
    pub fn pieces_verified(&self, id: TorrentId, pieces: &[PieceIndex]) {
        {
            let mut st = self.lock();
            let Some(t) = st.torrents.get_mut(&id) else {
                return;
            };
            for p in pieces {
                if let Some(v) = t.verified.get_mut(p.0 as usize) {
                    if !*v {
                        *v = true;
                        t.verified_count += 1;
                    }
                }
            }
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(pieces.iter().map(|p| (id, p.0)));
        self.pending_cv.notify_one();
        self.verified_tx.send_modify(|n| *n += 1);
    }

    /// A piece failed its hash check: forget any in-memory claim about it.
    pub fn piece_failed(&self, id: TorrentId, piece: PieceIndex) {
        let mut st = self.lock();
        if let Some(t) = st.torrents.get_mut(&id) {
            if let Some(v) = t.verified.get_mut(piece.0 as usize) {
                if *v {
                    tracing::warn!(torrent = %id, piece = piece.0, "verified piece reported as failed");
                }
            }
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
                let mut touched: Vec<u32> = pieces
                    .iter()
                    .flat_map(|&p| t.geometry.chunks_of_piece(PieceIndex(p)))
                    .collect();
                touched.dedup();
                let now_complete: Vec<(u32, u64)> = touched
                    .iter()
                    .filter(|&&c| {
                        t.chunks[c as usize].state == ChunkState::Partial
                            && t.all_pieces_verified(c)
                    })
                    .map(|&c| (c, t.chunks[c as usize].len))
                    .collect();
                (t.uid, touched, now_complete)
            };
            // A verified piece may cover chunks that never received a byte (all pad
            // zeros). They get an (empty, sparse) file so that every verified byte is
            // local or uploaded — the invariant recovery checks after a restart.
            for &c in &touched {
                let key = ChunkKey::new(id, c);
                let needs_file = {
                    let st = self.lock();
                    st.entry(key)
                        .is_some_and(|e| !e.present && e.state != ChunkState::Uploaded)
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
            for (c, len) in now_complete {
                let path = self.chunk_file(&uid, ChunkIndex(c));
                let data = files::read_whole(&path, len).map_err(|e| StoreError::io(&path, e))?;
                completed.push(Completed {
                    index: c,
                    hash: *blake3::hash(&data).as_bytes(),
                    object_id: crate::remote::new_object_id(),
                });
            }
            self.catalog.commit_verified(id, &pieces, &completed)?;
            let mut st = self.lock();
            let mut queue = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
            for c in &completed {
                let key = ChunkKey::new(id, c.index);
                if let Some(t) = st.torrents.get_mut(&id) {
                    let e = &mut t.chunks[c.index as usize];
                    e.hash = Some(c.hash);
                    e.object_id = Some(c.object_id.clone());
                }
                st.set_state(key, ChunkState::Complete);
                queue.push_back(key);
            }
            completed_total += completed.len();
        }
        if completed_total > 0 {
            self.upload_notify.notify_one();
        }
        Ok(completed_total)
    }

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
        let st = self.lock();
        st.torrents
            .values()
            .flat_map(|t| t.chunks.iter())
            .filter(|c| c.state == ChunkState::Complete)
            .count()
    }

    /// Number of complete chunks waiting for upload.
    pub fn pending_uploads(&self) -> usize {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The plaintext and identity of a complete chunk, for the uploader. `None` if the
    /// chunk is no longer waiting for upload (removed, or uploaded already).
    pub fn upload_payload(
        self: &Arc<Self>,
        key: ChunkKey,
    ) -> Result<Option<(RemoteChunk, Vec<u8>)>, StoreError> {
        let (chunk, path) = {
            let mut st = self.lock();
            let Some(t) = st.torrents.get(&key.torrent) else {
                return Ok(None);
            };
            let uid = t.uid;
            let Some(c) = st.entry(key) else {
                return Ok(None);
            };
            let (ChunkState::Complete, Some(hash), Some(oid)) = (c.state, c.hash, &c.object_id)
            else {
                return Ok(None);
            };
            let chunk = RemoteChunk {
                key,
                torrent_uid: uid,
                len: c.len,
                hash,
                object_id: oid.clone(),
            };
            st.pin(key);
            (chunk, self.chunk_file(&uid, key.index))
        };
        let _guard = PinGuard {
            store: Arc::clone(self),
            key,
        };
        let data = files::read_whole(&path, chunk.len).map_err(|e| StoreError::io(&path, e))?;
        if *blake3::hash(&data).as_bytes() != chunk.hash {
            // The local copy changed after it was verified (disk fault, outside meddling).
            return Err(StoreError::Fetch {
                key,
                error: FetchError::Integrity("local chunk no longer matches its hash".into()),
            });
        }
        Ok(Some((chunk, data)))
    }

    /// Identity of an uploaded chunk (for `verify`), `None` if it is not in the remote.
    pub fn remote_chunk(&self, key: ChunkKey) -> Option<RemoteChunk> {
        let st = self.lock();
        let uid = st.torrents.get(&key.torrent)?.uid;
        let c = st.entry(key)?;
        match (c.state, c.hash, &c.object_id) {
            (ChunkState::Uploaded, Some(hash), Some(oid)) => Some(RemoteChunk {
                key,
                torrent_uid: uid,
                len: c.len,
                hash,
                object_id: oid.clone(),
            }),
            _ => None,
        }
    }

    /// Which chunks of a torrent have a local file (for `verify`); `None` for a torrent
    /// the store does not know.
    pub fn local_chunks(&self, id: TorrentId) -> Option<Vec<bool>> {
        let st = self.lock();
        Some(
            st.torrents
                .get(&id)?
                .chunks
                .iter()
                .map(|c| c.present)
                .collect(),
        )
    }

    /// Re-hashes a chunk's local copy against its recorded hash. `None` when there is
    /// nothing to check (no local copy, or the chunk is not complete yet).
    pub fn check_local(self: &Arc<Self>, key: ChunkKey) -> Result<Option<bool>, StoreError> {
        let (uid, len, hash) = {
            let mut st = self.lock();
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
            (uid, len, hash)
        };
        let _guard = PinGuard {
            store: Arc::clone(self),
            key,
        };
        let path = self.chunk_file(&uid, key.index);
        let data = files::read_whole(&path, len).map_err(|e| StoreError::io(&path, e))?;
        Ok(Some(*blake3::hash(&data).as_bytes() == hash))
    }

    /// Records a successful upload: durable in the catalog first, then evictable.
    pub fn mark_uploaded(&self, key: ChunkKey) -> Result<(), StoreError> {
        self.catalog.mark_uploaded(key)?;
        self.lock().set_state(key, ChunkState::Uploaded);
        self.evict_to_limit();
        Ok(())
    }

    /// Pins (or unpins) all chunks of a seeding torrent.
    pub fn set_torrent_pinned(&self, id: TorrentId, pinned: bool) {
        self.lock().set_torrent_pinned(id, pinned);
        if !pinned {
            self.evict_to_limit();
        }
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_limit_bytes(&self, limit: u64) {
        self.limit_bytes
            .store(limit, std::sync::atomic::Ordering::Relaxed);
        self.evict_to_limit();
    }

    /// Evicts least recently used evictable chunks until the cache fits its limit (or
    /// nothing evictable is left). Returns how many were evicted.
    pub fn evict_to_limit(&self) -> usize {
        let limit = self.limit_bytes();
        let mut st = self.lock();
        let mut n = 0;
        while st.used_bytes() > limit {
            let Some(key) = st.evict_one() else {
                break;
            };
            let Some(uid) = st.torrents.get(&key.torrent).map(|t| t.uid) else {
                continue;
            };
            // Deleted under the lock: a fetch of the same chunk cannot interleave.
            let path = self.chunk_file(&uid, key.index);
            if let Err(e) = files::remove(&path) {
                tracing::warn!(%key, error = %e, "could not delete evicted chunk file");
            }
            n += 1;
        }
        n
    }

    /// Evicts every evictable chunk (e.g. `scripts/demo` emptying the cache).
    pub fn evict_all(&self) -> usize {
        let old = self.limit_bytes();
        self.limit_bytes
            .store(0, std::sync::atomic::Ordering::Relaxed);
        let n = self.evict_to_limit();
        self.limit_bytes
            .store(old, std::sync::atomic::Ordering::Relaxed);
        n
    }

    pub fn stats(&self) -> CacheStats {
        self.lock().stats()
    }

    pub fn torrent_stats(&self, id: TorrentId) -> Option<TorrentStats> {
        let st = self.lock();
        let t = st.torrents.get(&id)?;
        let mut s = TorrentStats {
            pieces_total: t.verified.len() as u32,
            pieces_verified: t.verified_count,
            chunks_total: t.chunks.len() as u32,
            ..Default::default()
        };
        for c in &t.chunks {
            s.chunks_local += u32::from(c.present);
            s.chunks_complete += u32::from(c.state != ChunkState::Partial);
            s.chunks_uploaded += u32::from(c.state == ChunkState::Uploaded);
        }
        s.bytes_verified = (0..t.verified.len() as u32)
            .filter(|&p| t.verified[p as usize])
            .map(|p| t.geometry.piece_size(PieceIndex(p)))
            .sum();
        Some(s)
    }

    /// Drops a torrent's local chunks and in-memory state. The catalog row is the
    /// caller's business.
    pub fn remove_torrent(&self, id: TorrentId) -> Result<(), StoreError> {
        let removed = self.lock().remove_torrent(id);
        if let Some(t) = removed {
            let dir = files::torrent_dir(&self.root, &t.uid);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::io(&dir, e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Stops the committer after a final flush.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        self.shutdown
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.pending_cv.notify_all();
        self.flush().map(|_| ())
    }
}

/// Batches verified pieces: wakes on new work, waits a moment for more, then commits
/// them with one fsync per touched chunk file and one transaction.
fn committer(store: Weak<Store>) {
    const BATCH_WINDOW: Duration = Duration::from_millis(20);
    loop {
        let Some(s) = store.upgrade() else {
            return;
        };
        {
            let pending = s.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.is_empty() && !s.shutdown.load(std::sync::atomic::Ordering::SeqCst) {
                // Bounded wait so a dropped store is noticed.
                let _ = s
                    .pending_cv
                    .wait_timeout(pending, Duration::from_millis(200));
            }
        }
        if s.shutdown.load(std::sync::atomic::Ordering::SeqCst) {
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

#[cfg(test)]
mod tests;
