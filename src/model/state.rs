//! The lifecycle of a chunk as the catalog records it.
//!
//! `Partial → Complete → Uploaded`. Whether an uploaded chunk is also present in the
//! local cache is the store's business (cached ↔ evicted), not a catalog state: the
//! catalog only records facts that must survive a crash.

/// Durable state of one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkState {
    /// Some overlapping piece is not verified yet. Local bytes may exist.
    Partial,
    /// Every overlapping piece is verified and the bytes are durable locally;
    /// not yet safe in the remote, so the chunk must not leave the cache.
    Complete,
    /// Encrypted and stored in the remote: the local copy may be evicted.
    Uploaded,
}

impl ChunkState {
    pub fn as_i64(self) -> i64 {
        match self {
            ChunkState::Partial => 0,
            ChunkState::Complete => 1,
            ChunkState::Uploaded => 2,
        }
    }

    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            0 => Some(ChunkState::Partial),
            1 => Some(ChunkState::Complete),
            2 => Some(ChunkState::Uploaded),
            _ => None,
        }
    }

    /// True when the remote holds this chunk, so the local copy is expendable.
    pub fn is_safe_in_remote(self) -> bool {
        self == ChunkState::Uploaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_integers() {
        for s in [
            ChunkState::Partial,
            ChunkState::Complete,
            ChunkState::Uploaded,
        ] {
            assert_eq!(ChunkState::from_i64(s.as_i64()), Some(s));
        }
        assert_eq!(ChunkState::from_i64(7), None);
    }
}
