//! The remote: where encrypted chunk objects and catalog snapshots live.
//!
//! One small trait, [`ObjectStore`], with an S3 implementation and a local-directory
//! implementation (the embedded default remote) that pass the same conformance tests.
//! Wrappers add bounded concurrency and retries. Object *contents* are sealed by
//! [`crypto`] before they reach any store; keys are opaque ids chosen by the caller.

use async_trait::async_trait;
use bytes::Bytes;

pub mod crypto;

/// Why a remote operation failed, classified for the retry policy.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The object does not exist.
    #[error("object {0} not found in the remote")]
    NotFound(String),
    /// Worth retrying: 5xx, throttling, timeouts, connection refused/reset.
    #[error("remote temporarily unavailable: {0}")]
    Transient(String),
    /// Not worth retrying: bad credentials, missing bucket, other 4xx, local I/O.
    #[error("remote error: {0}")]
    Permanent(String),
}

impl RemoteError {
    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteError::Transient(_))
    }
}

/// A flat namespace of immutable blobs. Keys are `/`-separated ASCII paths.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores `body` under `key`, replacing any previous object. Returns only once the
    /// object is durable in the store.
    async fn put(&self, key: &str, body: Bytes) -> Result<(), RemoteError>;
    /// The whole object.
    async fn get(&self, key: &str) -> Result<Bytes, RemoteError>;
    /// Removes the object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), RemoteError>;
    /// Keys that start with `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError>;
}

/// A fresh opaque object id: 128 random bits, hex. Reveals nothing about content.
pub fn new_object_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}
