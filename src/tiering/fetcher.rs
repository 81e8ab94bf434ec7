//! The remote read path: GET → decrypt → verify. See the module above for the rules.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

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

#[async_trait]
impl ChunkSource for Fetcher {
    async fn fetch(&self, chunk: &RemoteChunk) -> Result<Bytes, FetchError> {
        let name = object_key_for(&chunk.object_id);
        let object = self.remote.get(&name).await.map_err(|e| match e {
            RemoteError::NotFound(_) => FetchError::NotFound,
            other => FetchError::Unavailable(other.to_string()),
        })?;
        let aad = chunk_identity(chunk).aad();
        let key = self.key.clone();
        let len = chunk.len;
        let chunk_key = chunk.key;
        // Decryption is CPU work on a 1 MiB buffer: off the async workers. In place, and
        // the plaintext sliced out, not moved (the store checks its hash).
        tokio::task::spawn_blocking(move || {
            let mut object = Vec::from(object);
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
            Ok(Bytes::from(object).slice(plain))
        })
        .await
        .map_err(|e| FetchError::Unavailable(format!("decrypt task: {e}")))?
    }
}
