//! The daemon: one process holding the libtorrent session, the chunk store, the
//! uploader and the FUSE mount, plus the library it runs on and its control socket.

pub mod chunk_order;
pub mod config;
pub mod content;
pub mod control;
pub mod import;
pub mod library;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod run;
pub mod storage;
pub mod verify;
pub mod watch;

pub use library::{default_home, InitOptions, Library};
pub use run::{run, DaemonOptions};
