//! The storage libtorrent reads and writes through: a torrent's content stream (files in
//! torrent order, pad files included), addressed by stream offset.
//!
//! The chunk store implements [`TorrentStorage`]; the disk workers in `disk.rs` call it
//! from their own threads, never from libtorrent's network thread. Implementations may
//! block (a read of an evicted chunk fetches it from the remote) and must be safe to call
//! from several workers at once. `pieces_verified` may repeat pieces already verified
//! (after a full check, or when a finished torrent is swept), so it must be idempotent.

use crate::model::{PieceIndex, TorrentId};

/// The byte layout of a torrent, as libtorrent sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorrentLayout {
    pub piece_len: u64,
    pub total_len: u64,
    pub files: Vec<LayoutFile>,
    pub info_hash_v1: Option<[u8; 20]>,
    pub info_hash_v2: Option<[u8; 32]>,
}

/// One file of a torrent, in torrent order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutFile {
    /// Path components relative to the torrent's directory (for a multi-file torrent the
    /// leading torrent-name component is dropped). From the torrent: untrusted.
    pub path: Vec<String>,
    pub len: u64,
    /// A BitTorrent pad file: its bytes are zeros and never stored.
    pub pad: bool,
    /// Seconds since the Unix epoch; 0 when the torrent does not say.
    pub mtime: i64,
}

impl TorrentLayout {
    /// Number of pieces (the last may be shorter).
    pub fn num_pieces(&self) -> u32 {
        if self.piece_len == 0 {
            return 0;
        }
        u32::try_from(self.total_len.div_ceil(self.piece_len)).unwrap_or(u32::MAX)
    }

    /// Length of `piece` in the content stream, pad bytes included (the v1 view).
    pub fn piece_size(&self, piece: PieceIndex) -> u64 {
        let start = u64::from(piece.0) * self.piece_len;
        self.total_len.saturating_sub(start).min(self.piece_len)
    }

    /// Length of `piece` within the one file it belongs to (the v2 view: pieces never
    /// straddle files, pad bytes excluded). Zero if no data file starts at or before it.
    pub fn piece_size_v2(&self, piece: PieceIndex) -> u64 {
        let start = u64::from(piece.0) * self.piece_len;
        let mut file_start = 0u64;
        for file in &self.files {
            let file_end = file_start + file.len;
            if !file.pad && file.len > 0 && start >= file_start && start < file_end {
                return (file_end - start).min(self.piece_len);
            }
            file_start = file_end;
        }
        0
    }
}

/// Why the storage could not serve a request. Mapped to an errno for libtorrent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("no such torrent or data in the store")]
    NotFound,
    #[error("fetching from the remote failed: {0}")]
    Fetch(String),
    #[error("no space left in the store")]
    NoSpace,
}

/// What libtorrent needs from bae's chunk store.
pub trait TorrentStorage: Send + Sync + 'static {
    /// libtorrent created the storage (for a magnet: once metadata arrived). Returns the
    /// verified pieces (have-bitfield), one entry per piece.
    fn open(&self, t: TorrentId, layout: &TorrentLayout) -> Result<Vec<bool>, StorageError>;
    /// Blocking positioned write of stream bytes (stream = files in torrent order, pads included).
    fn write(&self, t: TorrentId, stream_offset: u64, data: &[u8]) -> Result<(), StorageError>;
    /// Blocking read of stream bytes; may fetch an evicted chunk from the remote (slow).
    /// Pad bytes read as zeros.
    fn read(&self, t: TorrentId, stream_offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;
    /// libtorrent verified these pieces (piece_finished / hash passed).
    fn pieces_verified(&self, t: TorrentId, pieces: &[PieceIndex]);
    /// A piece failed its hash check: its bytes are garbage until rewritten.
    fn piece_failed(&self, t: TorrentId, piece: PieceIndex);
    fn close(&self, t: TorrentId);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(len: u64, pad: bool) -> LayoutFile {
        LayoutFile {
            path: vec!["f".into()],
            len,
            pad,
            mtime: 0,
        }
    }

    #[test]
    fn piece_sizes_follow_files_for_v2() {
        // Hybrid layout: 40 KiB file, 24 KiB pad, 10 KiB file; 32 KiB pieces.
        let layout = TorrentLayout {
            piece_len: 32 << 10,
            total_len: (40 + 24 + 10) << 10,
            files: vec![
                file(40 << 10, false),
                file(24 << 10, true),
                file(10 << 10, false),
            ],
            info_hash_v1: None,
            info_hash_v2: None,
        };
        assert_eq!(layout.num_pieces(), 3);
        assert_eq!(layout.piece_size(PieceIndex(1)), 32 << 10);
        assert_eq!(layout.piece_size(PieceIndex(2)), 10 << 10);
        assert_eq!(layout.piece_size_v2(PieceIndex(0)), 32 << 10);
        assert_eq!(layout.piece_size_v2(PieceIndex(1)), 8 << 10);
        assert_eq!(layout.piece_size_v2(PieceIndex(2)), 10 << 10);
    }
}
