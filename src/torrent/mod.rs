//! libtorrent, bridged to bae: torrents download into and seed from the chunk store.
//!
//! libtorrent 2.0 runs with a custom disk subsystem (`cpp/bae_disk.*`) that forwards
//! every disk job through the cxx bridge (`bridge.rs`) to Rust workers (`disk.rs`), which
//! call the [`TorrentStorage`] trait; completions are posted back to libtorrent's network
//! thread, which never blocks on bae. [`Session`] is the safe API: add (.torrent or
//! magnet), pause, resume, remove, piece deadlines and priorities, status, and
//! [`Event`]s from libtorrent's alerts, resume data kept across crashes (`resume.rs`).
//! [`parse_metainfo`], [`parse_magnet`] and [`create_torrent`] use libtorrent's own parser
//! and creator; [`PieceHashes`] reads the torrent's piece hashes itself, to check bytes
//! that did not come through libtorrent.
//!
//! Nothing outside this module knows about libtorrent.

mod backpressure;
pub mod bencode;
mod bridge;
mod disk;
mod hashes;
mod metainfo;
mod resume;
mod session;
mod storage;

use std::path::PathBuf;

use crate::model::TorrentId;

pub use hashes::{HashKind, HashesError, PieceCheck, PieceHashes};
pub use metainfo::{
    create_torrent, create_torrent_with_progress, parse_magnet, parse_metainfo, MagnetInfo,
    Metainfo,
};
pub use session::{
    AddOptions, Event, QueueLimits, Session, SessionConfig, Source, TorrentState, TorrentStatus,
    RESUME_SAVE_INTERVAL,
};
pub use storage::{
    human, LayoutFile, Room, RoomLimit, StorageError, TorrentLayout, TorrentStorage,
};

/// Errors of the torrent layer.
#[derive(Debug, thiserror::Error)]
pub enum TorrentError {
    #[error("invalid torrent file: {0}")]
    InvalidTorrent(String),
    #[error("invalid magnet link: {0}")]
    InvalidMagnet(String),
    #[error("cannot create a torrent of {path}: {reason}")]
    Create { path: PathBuf, reason: String },
    #[error("torrent {0} is already in the session")]
    AlreadyAdded(TorrentId),
    #[error("torrent {0} is not in the session")]
    UnknownTorrent(TorrentId),
    #[error("libtorrent refused torrent {t}: {reason}")]
    Add { t: TorrentId, reason: String },
    #[error("the store returned {got} have-pieces for torrent {t}, which has {pieces} pieces")]
    HaveMismatch {
        t: TorrentId,
        got: usize,
        pieces: u32,
    },
    #[error("libtorrent session: {0}")]
    Session(String),
    #[error("cannot start torrent threads: {0}")]
    Workers(std::io::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
}
