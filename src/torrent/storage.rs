//! The storage libtorrent reads and writes through: a torrent's content stream (files in
//! torrent order, pad files included), addressed by stream offset.
//!
//! The chunk store implements [`TorrentStorage`]; the disk workers in `disk.rs` call it
//! from their own threads, never from libtorrent's network thread. Implementations may
//! block (a read of an evicted chunk fetches it from the remote) and must be safe to call
//! from several workers at once. `pieces_verified` may repeat pieces already verified
//! (after a full check, or when a finished torrent is swept), so it must be idempotent.
//! `room` is sampled a few times a second (never per block) by the disk subsystem's
//! backpressure; it must be cheap and must not block on the network.

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

/// How much more the storage can take before downloads must wait (backpressure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    /// Bytes the store may still account to the cache before its bound is reached. The
    /// store counts a chunk whole from its first written byte.
    pub cache: u64,
    /// Bytes that may still be written to the cache's disk before its free-space reserve
    /// is reached; None when unknown.
    pub disk: Option<u64>,
    /// The tighter of the two, for `status`.
    pub limit: RoomLimit,
}

/// The constraint behind a [`Room`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomLimit {
    /// The cache bound: `held` bytes cannot be evicted now (not uploaded, pinned, in use
    /// by reads), `not_uploaded` of them wait for the remote. Room comes back as uploads
    /// drain; a download may overrun it a little rather than stall forever (see disk.rs).
    Cache {
        held: u64,
        not_uploaded: u64,
        limit: u64,
    },
    /// The free-space reserve of the cache's filesystem: never written below.
    Disk { free: u64, reserve: u64 },
}

impl Room {
    /// Room that lets waiting downloads go on again: waking peers for less is churn.
    pub fn resume_margin(&self) -> u64 {
        let basis = match self.limit {
            RoomLimit::Cache { limit, .. } => limit / 16,
            RoomLimit::Disk { reserve, .. } => reserve / 8,
        };
        basis.clamp(256 << 10, 4 << 20)
    }

    /// The room left under the tighter bound.
    pub fn bytes(&self) -> u64 {
        self.cache.min(self.disk.unwrap_or(u64::MAX))
    }

    /// Downloads wait (or are about to).
    pub fn tight(&self) -> bool {
        self.bytes() < self.resume_margin()
    }
}

impl std::fmt::Display for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.limit {
            RoomLimit::Cache {
                held,
                not_uploaded,
                limit,
            } if *not_uploaded > 0 => write!(
                f,
                "waiting for cache space: {} not yet uploaded ({} held of a {} cache)",
                human(*not_uploaded),
                human(*held),
                human(*limit)
            ),
            RoomLimit::Cache { held, limit, .. } => write!(
                f,
                "waiting for cache space: {} pinned or in use of a {} cache",
                human(*held),
                human(*limit)
            ),
            RoomLimit::Disk { free, reserve } => write!(
                f,
                "disk full: {} free, reserve {}",
                human(*free),
                human(*reserve)
            ),
        }
    }
}

/// "1.2 GB", "800 MB", "12 KB": decimal units, one decimal below 10.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
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
    /// `read` for libtorrent's own hash checks, not for a peer (not counted as bytes sent
    /// to peers).
    fn read_to_hash(
        &self,
        t: TorrentId,
        stream_offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
        self.read(t, stream_offset, buf)
    }
    /// `read` on a thread that must never wait (libtorrent's network thread): `None`
    /// unless the bytes are at hand (in memory or the page cache); `read` follows then,
    /// on a worker. Must not block, start a fetch, or take a lock held across I/O.
    fn read_now(
        &self,
        t: TorrentId,
        stream_offset: u64,
        buf: &mut [u8],
    ) -> Option<Result<(), StorageError>> {
        let _ = (t, stream_offset, buf);
        None
    }
    /// libtorrent verified these pieces (piece_finished / hash passed).
    fn pieces_verified(&self, t: TorrentId, pieces: &[PieceIndex]);
    /// A piece failed its hash check: its bytes are garbage until rewritten.
    fn piece_failed(&self, t: TorrentId, piece: PieceIndex);
    fn close(&self, t: TorrentId);
    /// A peer asked for these stream bytes; a `read` of them follows once the read queue
    /// reaches it. The storage may start bringing them closer now (an evicted chunk back
    /// from the remote), so reads queued behind each other overlap their waits. Must not
    /// block for long: it runs ahead of the read workers on one thread.
    fn will_read(&self, t: TorrentId, stream_offset: u64, len: u64) {
        let _ = (t, stream_offset, len);
    }
    /// Room left before downloads must wait; `None`: unbounded (no backpressure).
    /// `want`: what downloads would like to write before the next sample; the storage
    /// may make that much room first (evicting what is evictable).
    fn room(&self, want: u64) -> Option<Room> {
        let _ = want;
        None
    }
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
    fn room_reasons_read_well() {
        assert_eq!(human(1_234_567_890), "1.2 GB");
        assert_eq!(human(800_000_000), "800 MB");
        assert_eq!(human(512), "512 B");
        let disk = Room {
            cache: 1 << 40,
            disk: Some(0),
            limit: RoomLimit::Disk {
                free: 800_000_000,
                reserve: 2_147_483_648,
            },
        };
        assert_eq!(disk.to_string(), "disk full: 800 MB free, reserve 2.1 GB");
        let cache = Room {
            cache: 0,
            disk: None,
            limit: RoomLimit::Cache {
                held: 70_000_000,
                not_uploaded: 1_200_000_000,
                limit: 64 << 20,
            },
        };
        assert!(cache
            .to_string()
            .starts_with("waiting for cache space: 1.2 GB not yet uploaded"));
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
