//! The one door through which the filesystem sees torrent data: the [`Content`] trait.
//!
//! The fs layer knows nothing about chunks, S3 or libtorrent. It asks `Content` for the
//! current set of torrents (names and file lists, all untrusted) and for verified byte
//! ranges of a torrent's content stream (the files in torrent order, pad files
//! included). The daemon implements it over the chunk store and the libtorrent session;
//! tests implement it over plain bytes.
//!
//! Invariants the fs relies on:
//! - `read` returns exactly the bytes of the requested range (never fewer, never
//!   unverified) or an error; it bounds its own waiting.
//! - `prefetch` and `is_complete` never block.
//! - A torrent's file list never changes while it has the same [`TorrentId`].

use std::ops::Range;

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

/// Torrent data as the filesystem needs it. See the module comment for the contract.
#[async_trait]
pub trait Content: Send + Sync + 'static {
    /// Current torrents with known metadata, and a generation number that changes when
    /// the set changes.
    fn snapshot(&self) -> (u64, Vec<TorrentEntry>);

    /// The generation [`Content::snapshot`] would return now. The fs calls this on every
    /// operation on the root to decide whether to rebuild its tree, so implementations
    /// should override it with something cheaper than a full snapshot.
    fn generation(&self) -> u64 {
        self.snapshot().0
    }

    /// Verified bytes `range` of torrent `t`'s content stream. May wait (not downloaded
    /// yet, remote fetch); the implementation bounds the wait.
    async fn read(&self, t: TorrentId, range: Range<u64>) -> Result<Bytes, ContentError>;

    /// Hint: these stream bytes will be wanted soon (read-ahead; first and last chunk of
    /// a file on open). Must not block.
    fn prefetch(&self, t: TorrentId, range: Range<u64>);

    /// Whether every byte of the torrent is present locally. Lets the fs keep the
    /// kernel page cache across opens.
    fn is_complete(&self, t: TorrentId) -> bool;
}
