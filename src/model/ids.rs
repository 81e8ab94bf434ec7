//! Newtype ids, so a piece index is never passed where a chunk index is expected.

use std::fmt;

/// A torrent's row id in the catalog. Stable for the life of the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TorrentId(pub i64);

/// Index of a 1 MiB chunk within a torrent's content stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkIndex(pub u32);

/// Index of a BitTorrent piece within a torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceIndex(pub u32);

/// Index of a file in torrent order (pad files included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileIndex(pub u32);

/// Names one chunk of one torrent: the unit of caching, pinning and upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkKey {
    pub torrent: TorrentId,
    pub index: ChunkIndex,
}

impl ChunkKey {
    pub fn new(torrent: TorrentId, index: u32) -> Self {
        ChunkKey {
            torrent,
            index: ChunkIndex(index),
        }
    }
}

impl fmt::Display for TorrentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Display for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/c{}", self.torrent, self.index.0)
    }
}
