//! Tiering: moving chunks between the local cache and the remote.
//!
//! - [`Fetcher`] brings an evicted chunk back: GET, decrypt (AES-256-GCM bound to the
//!   chunk's identity), check length and plaintext hash. A swapped, altered or truncated
//!   object is an integrity error and is never served.
//! - [`Uploader`] seals complete chunks and PUTs them; a chunk is marked uploaded (and so
//!   becomes evictable) only after its PUT succeeded. Failed uploads are retried with
//!   backoff; a chunk that is not safe in the remote stays in the cache.
//! - [`pressure`] measures the cache's room (its bound, the free-space reserve of its
//!   disk) for the download backpressure.
//! - [`journal`] keeps the library's metadata in the remote (torrents, and a journal of
//!   uploaded chunks), so a new machine can rebuild the library from the bucket and the
//!   key, after a clean stop or a crash alike; [`snapshot`] reads the whole-catalog
//!   snapshots that libraries made before it.

mod fetcher;
pub mod journal;
pub mod pressure;
pub mod snapshot;
mod uploader;

pub use fetcher::Fetcher;
pub use journal::Journal;
pub use pressure::CachePressure;
pub use uploader::{Uploader, UploaderStatus};

use crate::remote::crypto::{ChunkIdentity, ObjectIdentity};
use crate::store::RemoteChunk;

/// The identity a chunk object is sealed to: torrent uid, index and length. Moving an
/// object to another chunk's name makes it fail authentication.
pub fn chunk_identity(chunk: &RemoteChunk) -> ObjectIdentity {
    ObjectIdentity::Chunk(ChunkIdentity {
        torrent_uid: chunk.torrent_uid,
        index: chunk.key.index.0,
        len_bytes: chunk.len as u32,
    })
}
