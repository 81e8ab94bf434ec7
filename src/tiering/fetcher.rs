//! The remote read path: GET → decrypt → verify. See the module above for the rules.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::remote::crypto::{self, Key};
use crate::remote::{object_key_for, ObjectStore, Remote, RemoteError};
use crate::store::{ChunkSource, FetchError, RemoteChunk};

use super::chunk_identity;

pub struct Fetcher {
    remote: Remote,
    key: Arc<Key>,
}

impl Fetcher {
    pub fn new(remote: Remote, key: Arc<Key>) -> Fetcher {
        Fetcher { remote, key }
    }
}

/// The smallest part worth its own request when a fetch is split.
const MIN_PART_BYTES: u64 = 128 * 1024;

/// `len` bytes cut into at most `parts` consecutive ranges of at least
/// [`MIN_PART_BYTES`] (a multiple of 4 KiB each, but for the last).
fn split(len: u64, parts: usize) -> Vec<std::ops::Range<u64>> {
    let by_size = len.div_ceil(MIN_PART_BYTES).max(1);
    let n = (parts.max(1) as u64).min(by_size);
    let step = len.div_ceil(n).max(MIN_PART_BYTES).div_ceil(4096) * 4096;
    let mut out = Vec::with_capacity(n as usize);
    let mut at = 0;
    while at < len || out.is_empty() {
        let end = (at + step).min(len);
        out.push(at..end);
        at = end;
    }
    out
}

impl Fetcher {
    /// The sealed object of `chunk`, whole or in `parts` ranges asked for at once, in a
    /// buffer of its own (to be decrypted in place).
    async fn object(&self, chunk: &RemoteChunk, parts: usize) -> Result<BytesMut, RemoteError> {
        let name = object_key_for(&chunk.object_id);
        if parts <= 1 || !self.remote.ranges_in_parallel_help() {
            // The store's buffer itself when nothing else holds it (no copy).
            let whole = self.remote.get(&name).await?;
            return Ok(whole
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..])));
        }
        let len = chunk.len + crypto::OVERHEAD_BYTES as u64;
        let ranges = split(len, parts);
        let got = futures::future::try_join_all(
            ranges.into_iter().map(|r| self.remote.get_range(&name, r)),
        )
        .await?;
        let mut object = BytesMut::with_capacity(len as usize);
        for part in got {
            object.extend_from_slice(&part);
        }
        Ok(object)
    }
}

#[async_trait]
impl ChunkSource for Fetcher {
    async fn fetch(&self, chunk: &RemoteChunk) -> Result<Bytes, FetchError> {
        self.fetch_parts(chunk, 1).await
    }

    async fn fetch_parts(&self, chunk: &RemoteChunk, parts: usize) -> Result<Bytes, FetchError> {
        let mut object = self.object(chunk, parts).await.map_err(|e| match e {
            RemoteError::NotFound(_) => FetchError::NotFound,
            // Shorter than the object sealed for this chunk: not the bytes stored.
            RemoteError::Short(why) => FetchError::Integrity(why),
            other => FetchError::Unavailable(other.to_string()),
        })?;
        let aad = chunk_identity(chunk).aad();
        let key = self.key.clone();
        let len = chunk.len;
        let chunk_key = chunk.key;
        // Decryption is CPU work on a 1 MiB buffer: off the async workers. In place, and
        // the plaintext sliced out, not moved (the store checks its hash).
        tokio::task::spawn_blocking(move || {
            let plain = crypto::open_within(&key, &aad, &mut object).map_err(|e| {
                tracing::error!(chunk = %chunk_key, error = %e, "remote object failed authentication");
                FetchError::Integrity(e.to_string())
            })?;
            if plain.len() as u64 != len {
                return Err(FetchError::Integrity(format!(
                    "decrypted {} bytes, expected {len}",
                    plain.len()
                )));
            }
            Ok(object.freeze().slice(plain))
        })
        .await
        .map_err(|e| FetchError::Unavailable(format!("decrypt task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_covers_the_object_once_in_order() {
        for (len, parts) in [
            (1_048_607, 4),
            (1_048_607, 1),
            (100, 4),
            (0, 4),
            (300_000, 8),
            (4 * 1_048_576 + 31, 3),
        ] {
            let ranges = split(len, parts);
            assert!(
                !ranges.is_empty() && ranges.len() <= parts.max(1),
                "{len} {parts}: {ranges:?}"
            );
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, len);
            for w in ranges.windows(2) {
                assert_eq!(w[0].end, w[1].start, "{ranges:?}");
                assert!(w[0].end - w[0].start >= MIN_PART_BYTES, "{ranges:?}");
            }
        }
        assert_eq!(split(1_048_607, 4).len(), 4);
        assert_eq!(split(200_000, 4).len(), 2);
    }
}
