//! Pure types and arithmetic shared by every layer: ids, the byte geometry of a
//! torrent (pieces, chunks, files) and chunk states.
//!
//! Nothing here does I/O. The invariants of the storage model live here so they can be
//! tested exhaustively: chunk *i* covers bytes `[i·CHUNK_LEN, (i+1)·CHUNK_LEN)` of the
//! torrent's content stream (files in torrent order, pad files included), the last
//! chunk is shorter, and pieces map onto chunks independently of chunk boundaries.

mod bits;
mod geometry;
mod ids;
mod state;

pub use bits::{BitSet, ChunkStates};
pub use geometry::{ChunkSpan, FileLayout, FileSpan, Geometry, GeometryError, CHUNK_LEN};
pub use ids::{ChunkIndex, ChunkKey, FileIndex, PieceIndex, TorrentId};
pub use state::ChunkState;
