//! The read-only FUSE mount: root → one directory per torrent → its files.
//!
//! - [`content`]: the [`Content`] trait, the only way the fs sees torrent data.
//! - [`names`] and [`tree`]: untrusted torrent names turned into a safe, stable tree,
//!   each torrent's subtree a flat record (`record`) kept out of the heap (`image`).
//! - [`filesystem`]: every supported operation as plain, kernel-free logic.
//! - [`readahead`]: sequential-reader detection and the read-ahead window.
//! - [`fuse`]: the thin `fuser` adapter; reads answered off the dispatch thread.
//! - [`mount`](mod@mount): mounting, readiness, unmounting.
//!
//! Nothing here knows about chunks, S3 or libtorrent; nothing but `fuse` and `mount`
//! knows about `fuser`.

pub mod content;
mod error;
pub mod filesystem;
pub mod fuse;
mod image;
mod mount;
pub mod names;
pub mod readahead;
mod record;
pub mod tree;

#[cfg(test)]
mod tests;

pub use content::{
    Content, ContentError, ContentEvent, ContentSink, FileEntry, Progress, Subscribers,
    TorrentEntry,
};
pub use error::FsError;
pub use filesystem::{
    Attr, DirEntry, EntryKind, Filesystem, FsConfig, Invalidation, Invalidator, Opened, StatFs,
};
pub use mount::{
    clean_stale_mount, is_fuse_mount, mount, source_name, unmount_path, wait_until_mounted,
    MountHandle, MountOptions, Permissions,
};
pub use tree::{Change, InodeNo, Tree};
