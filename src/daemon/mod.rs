//! The daemon: one process holding the libtorrent session, the chunk store, the
//! uploader and the FUSE mount, plus the library it runs on and its control socket.

pub mod config;
pub mod library;
