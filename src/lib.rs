//! bae: a music collector's torrents kept as 1 MiB chunks — downloaded by libtorrent
//! straight into a chunk store, encrypted into S3 behind a bounded local cache, shown
//! as ordinary files in a read-only FUSE mount, and seeded from the same chunks.
//!
//! Data flows one way: libtorrent → store → remote; a read → fs → store → (remote or
//! libtorrent). Nothing below `fs` knows about FUSE, nothing but `torrent` knows about
//! libtorrent, nothing but `remote` knows about aws-sdk-s3.

pub mod background;
pub mod catalog;
pub mod cli;
pub mod daemon;
pub mod direct;
pub mod fs;
pub mod model;
pub mod nowait;
pub mod remote;
pub mod store;
pub mod tiering;
pub mod torrent;
