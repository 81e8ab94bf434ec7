//! The one door through which the filesystem sees torrent data: the [`Content`] trait.
//!
//! The fs layer knows nothing about chunks, S3 or libtorrent. `Content` tells it which
//! torrents exist — by events, one torrent at a time ([`ContentEvent`], pushed to the
//! [`ContentSink`] the fs registers with [`Content::subscribe`]) — and answers reads of
//! verified byte ranges of a torrent's content stream (the files in torrent order, pad
//! files included). The daemon implements it over the chunk store and the libtorrent
//! session; tests implement it over plain bytes.
//!
//! Invariants the fs relies on:
//! - `subscribe` replays the current torrents as [`ContentEvent::Upsert`]s in
//!   `TorrentId` order and registers the sink under the same lock that orders later
//!   changes: the sink sees every torrent and every change once, in order. (Helper:
//!   [`Subscribers`].) Events are idempotent: an `Upsert` of an entry already shown
//!   and a `Removed` of an unknown torrent change nothing.
//! - Events are delivered synchronously on the thread that made the change; the sink
//!   is quick (memory only) and never calls back into the content.
//! - `read` returns exactly the bytes of the requested range (never fewer, never
//!   unverified) or an error; it bounds its own waiting.
//! - `prefetch`, `is_complete` and `progress` never block on I/O: they are answered
//!   from memory.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::model::TorrentId;

/// One torrent as the mount shows it. Names and paths come from the .torrent file and
/// are untrusted: the tree sanitises them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorrentEntry {
    pub id: TorrentId,
    /// The torrent's name (untrusted).
    pub name: String,
    /// When the torrent was added, unix seconds. Used as the mtime of its directories.
    pub added_at: i64,
    /// Info hash, lower-case hex (v1 if it has one, else v2); shown as an xattr.
    pub info_hash: String,
    /// Files in torrent order, pad files included (their position is the `FileIndex`).
    pub files: Vec<FileEntry>,
}

/// One file of a torrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Raw path components from the torrent (untrusted).
    pub path: Vec<String>,
    /// Where the file starts in the torrent's content stream.
    pub stream_offset: u64,
    pub len: u64,
    /// A v1/hybrid pad file: part of the stream, never shown in the mount.
    pub pad: bool,
    /// Modification time, unix seconds; 0 means unknown (the torrent's `added_at` is shown).
    pub mtime: i64,
}

/// Why [`Content::read`] could not return the bytes.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ContentError {
    /// The torrent (or range) is not known: removed while open, or out of range.
    #[error("torrent or range not found")]
    NotFound,
    /// The bytes did not arrive within the configured wait.
    #[error("timed out waiting for data")]
    Timeout,
    /// The bytes failed verification (piece hash, chunk hash or GCM tag).
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// The bytes cannot be had right now (remote down, disk error…).
    #[error("data unavailable: {0}")]
    Unavailable(String),
}

/// A change in the set of torrents the mount shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentEvent {
    /// A torrent with known metadata is there: new, or its entry changed (a magnet's
    /// metadata arrived, a rename).
    Upsert(TorrentEntry),
    /// The torrent is gone (removed, or its metadata withdrawn).
    Removed(TorrentId),
}

/// Where a [`Content`] sends its [`ContentEvent`]s.
pub trait ContentSink: Send + Sync {
    /// Applies one event. Returns `false` once the sink is no longer interested (its
    /// mount ended): the content then drops it.
    fn apply(&self, event: ContentEvent) -> bool;
}

/// How far along a torrent is, from numbers the content keeps in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the content stream.
    pub total_bytes: u64,
    /// Bytes in hash-verified pieces.
    pub verified_bytes: u64,
    /// Bytes held in the local cache.
    pub cached_bytes: u64,
}

/// The sinks of one content, for implementations of [`Content::subscribe`]. Callers
/// hold their own state lock around [`Subscribers::subscribe`] and
/// [`Subscribers::publish`], which is what orders replay and changes.
#[derive(Default)]
pub struct Subscribers {
    sinks: Mutex<Vec<Arc<dyn ContentSink>>>,
}

impl Subscribers {
    /// Replays `current` (given in `TorrentId` order) to `sink`, then registers it.
    /// One entry at a time: a library's worth of file lists is never in memory at once.
    pub fn subscribe(
        &self,
        sink: Arc<dyn ContentSink>,
        current: impl IntoIterator<Item = TorrentEntry>,
    ) {
        for t in current {
            if !sink.apply(ContentEvent::Upsert(t)) {
                return;
            }
        }
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sink);
    }

    /// Number of registered sinks.
    pub fn len(&self) -> usize {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `event` to every sink, dropping those that are gone.
    pub fn publish(&self, event: ContentEvent) {
        self.sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.apply(event.clone()));
    }
}

/// Torrent data as the filesystem needs it. See the module comment for the contract.
#[async_trait]
pub trait Content: Send + Sync + 'static {
    /// Registers `sink` for every change from now on, first replaying the current
    /// torrents to it (see the module comment).
    fn subscribe(&self, sink: Arc<dyn ContentSink>);

    /// Verified bytes `range` of torrent `t`'s content stream. May wait (not downloaded
    /// yet, remote fetch); the implementation bounds the wait.
    async fn read(&self, t: TorrentId, range: Range<u64>) -> Result<Bytes, ContentError>;

    /// Hint: these stream bytes will be read next (a file's head when it is opened):
    /// worth bringing before other prefetched bytes.
    fn prefetch_next(&self, t: TorrentId, range: Range<u64>) {
        self.prefetch(t, range)
    }

    /// Hint: these stream bytes may be wanted (a file's tail on open, where tags live),
    /// if they are at hand somewhere cheap (the remote): not worth competing with the
    /// head for a slow download.
    fn prefetch_stored(&self, t: TorrentId, range: Range<u64>) {
        self.prefetch(t, range)
    }

    /// Whether [`Content::read`] of `range` would answer now, without waiting for a
    /// download or a fetch. Lets the filesystem retry at once a range that failed a
    /// moment ago and has arrived since.
    fn readable_now(&self, _t: TorrentId, _range: Range<u64>) -> bool {
        false
    }

    /// Hint: these stream bytes will be wanted soon (read-ahead; first and last chunk of
    /// a file on open). Must not block.
    fn prefetch(&self, t: TorrentId, range: Range<u64>);

    /// The length of torrent `t`'s content stream, if known: read-ahead runs on past a
    /// file's end into the next file. Must not block.
    fn stream_len(&self, _t: TorrentId) -> Option<u64> {
        None
    }

    /// The torrent's progress, for the mount's `user.bae.*` extended attributes.
    /// `None` when unknown.
    fn progress(&self, _t: TorrentId) -> Option<Progress> {
        None
    }
}
