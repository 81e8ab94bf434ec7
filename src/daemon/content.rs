//! What the mount reads: the chunk store, with libtorrent behind it for pieces not
//! downloaded yet.
//!
//! A read of verified bytes is served from the cache or fetched from the remote by the
//! store. A read that touches unverified pieces asks libtorrent for them with piece
//! deadlines (streaming) and waits — bounded by the configured read timeout — for the
//! store to report them verified.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::catalog::Catalog;
use crate::fs::{Content, ContentError, FileEntry, TorrentEntry};
use crate::model::{ChunkKey, PieceIndex, TorrentId, CHUNK_LEN};
use crate::store::{FetchError, Store, StoreError};
use crate::torrent::Session;

pub struct StoreContent {
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    session: OnceLock<Weak<Session>>,
    read_timeout: Duration,
    generation: AtomicU64,
    cached: Mutex<Option<(u64, Vec<TorrentEntry>)>>,
}

/// Deadline libtorrent gets for a piece a reader is waiting on right now.
const URGENT_DEADLINE_MS: u32 = 500;
/// Deadline for pieces wanted by read-ahead.
const READAHEAD_DEADLINE_MS: u32 = 3_000;

impl StoreContent {
    pub fn new(store: Arc<Store>, catalog: Arc<Catalog>, read_timeout: Duration) -> Self {
        StoreContent {
            store,
            catalog,
            session: OnceLock::new(),
            read_timeout,
            generation: AtomicU64::new(1),
            cached: Mutex::new(None),
        }
    }

    pub fn set_session(&self, session: &Arc<Session>) {
        let _ = self.session.set(Arc::downgrade(session));
    }

    /// The set of torrents (or a layout) changed: the mount rebuilds its tree.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn want_pieces(&self, t: TorrentId, pieces: &[PieceIndex], deadline_ms: u32) {
        let Some(session) = self.session.get().and_then(Weak::upgrade) else {
            return;
        };
        for (i, p) in pieces.iter().enumerate() {
            // Stagger deadlines so libtorrent fetches them in reading order.
            let d = deadline_ms.saturating_add(i as u32 * 50);
            if let Err(e) = session.set_piece_deadline(t, *p, d) {
                tracing::debug!(torrent = %t, piece = p.0, error = %e, "could not set piece deadline");
                return;
            }
        }
    }

    async fn read_waiting(&self, t: TorrentId, range: Range<u64>) -> Result<Bytes, ContentError> {
        let mut verified = self.store.watch_verified();
        let mut asked = false;
        loop {
            verified.borrow_and_update();
            match self.store.read_verified(t, range.clone()).await {
                Ok(b) => return Ok(b),
                Err(StoreError::NotVerified { missing, .. }) => {
                    if !asked {
                        super::metrics::read_waited_for_pieces();
                        self.want_pieces(t, &missing, URGENT_DEADLINE_MS);
                        asked = true;
                    }
                    // Wake on any verification, and re-assert deadlines now and then
                    // (libtorrent drops them when a torrent is paused or restarted).
                    if tokio::time::timeout(Duration::from_secs(5), verified.changed())
                        .await
                        .is_err()
                    {
                        asked = false;
                    }
                }
                Err(e) => return Err(content_err(e)),
            }
        }
    }
}

fn content_err(e: StoreError) -> ContentError {
    match e {
        StoreError::UnknownTorrent(_) | StoreError::OutOfRange { .. } => ContentError::NotFound,
        StoreError::Fetch {
            error: FetchError::Integrity(m),
            key,
        } => ContentError::Integrity(format!("chunk {key}: {m}")),
        other => ContentError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl Content for StoreContent {
    fn snapshot(&self) -> (u64, Vec<TorrentEntry>) {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, entries)) = cached.as_ref() {
            if *g == generation {
                return (generation, entries.clone());
            }
        }
        let mut entries = Vec::new();
        match self.catalog.torrents() {
            Ok(torrents) => {
                for t in torrents.into_iter().filter(|t| t.geometry.is_some()) {
                    let files = match self.catalog.files(t.id) {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::warn!(torrent = %t.id, error = %e, "cannot list files");
                            continue;
                        }
                    };
                    entries.push(TorrentEntry {
                        id: t.id,
                        name: t.name,
                        added_at: t.added_at,
                        files: files
                            .into_iter()
                            .map(|f| FileEntry {
                                path: f.path,
                                stream_offset: f.stream_offset,
                                len: f.len,
                                pad: f.pad,
                                mtime: f.mtime,
                            })
                            .collect(),
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list torrents for the mount"),
        }
        *cached = Some((generation, entries.clone()));
        (generation, entries)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    async fn read(&self, t: TorrentId, range: Range<u64>) -> Result<Bytes, ContentError> {
        match tokio::time::timeout(self.read_timeout, self.read_waiting(t, range.clone())).await {
            Ok(r) => {
                if let Err(e) = &r {
                    tracing::warn!(torrent = %t, start = range.start, end = range.end, error = %e, "read failed");
                }
                r
            }
            Err(_) => {
                tracing::warn!(torrent = %t, start = range.start, end = range.end, "read timed out");
                Err(ContentError::Timeout)
            }
        }
    }

    fn prefetch(&self, t: TorrentId, range: Range<u64>) {
        let missing = match self.store.missing_pieces(t, range.clone()) {
            Ok(m) => m,
            Err(_) => return,
        };
        if !missing.is_empty() {
            self.want_pieces(t, &missing, READAHEAD_DEADLINE_MS);
        }
        // Verified chunks that were evicted come back from the remote in parallel.
        let store = self.store.clone();
        let first = range.start / CHUNK_LEN;
        let last = range.end.saturating_sub(1) / CHUNK_LEN;
        for c in first..=last {
            let store = store.clone();
            let key = ChunkKey::new(t, c as u32);
            store.runtime().clone().spawn(async move {
                if let Err(e) = store.prefetch_chunk(key).await {
                    tracing::debug!(chunk = %key, error = %e, "prefetch failed");
                }
            });
        }
    }

    fn is_complete(&self, t: TorrentId) -> bool {
        self.store.is_complete(t)
    }
}
