//! The chunk store as libtorrent's storage: the adapter between `torrent::TorrentStorage`
//! (stream offsets, blocking calls from disk workers) and `store::Store`.
//!
//! `open` is where a torrent's layout first becomes known for a magnet link, so it also
//! records the layout in the catalog and tells the mount about the torrent.

use std::sync::Arc;

use crate::catalog::{Catalog, FileRecord, Layout};
use crate::model::{PieceIndex, TorrentId};
use crate::store::{Store, StoreError};
use crate::tiering::CachePressure;
use crate::torrent::{Room, StorageError, TorrentLayout, TorrentStorage};

use super::content::StoreContent;

pub struct StoreStorage {
    pub store: Arc<Store>,
    pub catalog: Arc<Catalog>,
    pub content: Arc<StoreContent>,
    pub pressure: Arc<CachePressure>,
}

pub fn layout_of(l: &TorrentLayout) -> Layout {
    let mut offset = 0;
    let files = l
        .files
        .iter()
        .map(|f| {
            let r = FileRecord {
                path: f.path.clone(),
                stream_offset: offset,
                len: f.len,
                pad: f.pad,
                mtime: f.mtime,
            };
            offset += f.len;
            r
        })
        .collect();
    Layout {
        piece_len: l.piece_len,
        total_len: l.total_len,
        files,
    }
}

fn storage_err(e: StoreError) -> StorageError {
    match e {
        StoreError::UnknownTorrent(_) | StoreError::OutOfRange { .. } | StoreError::Lost(_) => {
            StorageError::NotFound
        }
        StoreError::Fetch { .. } => StorageError::Fetch(e.to_string()),
        StoreError::Io { ref source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            StorageError::NoSpace
        }
        other => StorageError::Io(other.to_string()),
    }
}

impl TorrentStorage for StoreStorage {
    fn open(&self, t: TorrentId, layout: &TorrentLayout) -> Result<Vec<bool>, StorageError> {
        // Idempotent: a .torrent's layout is recorded at `bae add`; a magnet's arrives here.
        self.catalog
            .set_layout(t, &layout_of(layout), None, None)
            .map_err(|e| StorageError::Io(e.to_string()))?;
        self.store.register_torrent(t).map_err(storage_err)?;
        let torrent = self
            .catalog
            .torrent(t)
            .map_err(|e| StorageError::Io(e.to_string()))?;
        let fits = self.pressure.pin_fits(layout.total_len);
        self.store
            .set_torrent_pinned(t, torrent.seeding && torrent.pin && fits);
        self.content.torrent_changed(t);
        self.store.verified_pieces(t).map_err(storage_err)
    }

    fn write(&self, t: TorrentId, stream_offset: u64, data: &[u8]) -> Result<(), StorageError> {
        // At the reserve: refused like a full disk (the write is retried, never lost).
        let r = if self.pressure.may_write(data.len() as u64) {
            self.store
                .write(t, stream_offset, data)
                .map_err(storage_err)
        } else {
            Err(StorageError::NoSpace)
        };
        match r {
            Ok(()) => super::metrics::peer_bytes(t.0, data.len() as u64, 0),
            Err(StorageError::NoSpace) => self.pressure.note_no_space(),
            Err(_) => {}
        }
        r
    }

    fn read(&self, t: TorrentId, stream_offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        super::metrics::peer_bytes(t.0, 0, buf.len() as u64);
        self.read_to_hash(t, stream_offset, buf)
    }

    fn read_to_hash(
        &self,
        t: TorrentId,
        stream_offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
        self.store
            .read_raw_blocking(t, stream_offset, buf)
            .map_err(storage_err)
    }

    fn read_now(
        &self,
        t: TorrentId,
        stream_offset: u64,
        buf: &mut [u8],
    ) -> Option<Result<(), StorageError>> {
        let r = self
            .store
            .read_raw_now(t, stream_offset, buf)?
            .map_err(storage_err);
        super::metrics::peer_bytes(t.0, 0, buf.len() as u64);
        Some(r)
    }

    fn will_read(&self, t: TorrentId, stream_offset: u64, len: u64) {
        self.store
            .prefetch_for_peer(t, stream_offset..stream_offset + len);
    }

    fn pieces_verified(&self, t: TorrentId, pieces: &[PieceIndex]) {
        self.store.pieces_verified(t, pieces);
    }

    fn piece_failed(&self, t: TorrentId, piece: PieceIndex) {
        self.store.piece_failed(t, piece);
    }

    fn close(&self, _t: TorrentId) {
        // The store keeps serving the mount after libtorrent lets go of a torrent.
    }

    fn room(&self, want: u64) -> Option<Room> {
        Some(self.pressure.room(want))
    }
}
