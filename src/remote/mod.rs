//! The remote: where encrypted chunk objects and catalog snapshots live.
//!
//! One small trait, [`ObjectStore`], with an S3 implementation ([`s3::S3Store`]) and a
//! local-directory implementation ([`local::LocalDirStore`], the embedded default remote)
//! that pass the same conformance tests. [`retry::Remote`] wraps any store with bounded
//! concurrency and retries; [`retry::FaultyStore`] injects faults and latency for tests.
//! Object *contents* are sealed by [`crypto`] before they reach any store.
//!
//! Invariants: object keys are opaque (random ids, see [`new_object_id`]) so names reveal
//! nothing about content; keys are `/`-separated ASCII paths without `.`/`..` segments.
//! Nothing outside this module knows about aws-sdk-s3.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use rand::RngCore;

pub mod crypto;
pub mod local;
pub mod retry;
pub mod s3;

pub use local::LocalDirStore;
pub use retry::{FaultyStore, Remote, RemoteOptions, RetryPolicy};
pub use s3::{S3Config, S3Store};

/// Why a remote operation failed, classified for the retry policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// The object does not exist.
    #[error("object {0} not found in the remote")]
    NotFound(String),
    /// Worth retrying: 5xx, throttling, timeouts, connection refused/reset.
    #[error("remote temporarily unavailable: {0}")]
    Transient(String),
    /// Not worth retrying: bad credentials, missing bucket, other 4xx, bad key, local I/O.
    #[error("remote error: {0}")]
    Permanent(String),
    /// The object ends before the bytes asked for (a ranged read): it is not the object
    /// that was stored, and asking again brings the same.
    #[error("remote object too short: {0}")]
    Short(String),
}

impl RemoteError {
    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteError::Transient(_))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, RemoteError::NotFound(_))
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
    /// Bytes `range` of the object, exactly: an object that ends before `range.end` is
    /// an error. By default the whole object is fetched and cut; stores that can read a
    /// part (an HTTP range, a positional read) do that instead.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, RemoteError> {
        let whole = self.get(key).await?;
        cut_range(key, whole, range)
    }
    /// Whether an object comes sooner as several ranges asked for at once: true where
    /// each response streams slower than the link (an HTTP object store), not where one
    /// read is as fast as several (a local directory).
    fn ranges_in_parallel_help(&self) -> bool {
        false
    }
    /// Removes the object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), RemoteError>;
    /// Keys that start with `prefix`, in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError>;
}

/// `range` of `whole`, or the error a short object gets.
pub fn cut_range(key: &str, whole: Bytes, range: Range<u64>) -> Result<Bytes, RemoteError> {
    if range.start > range.end || range.end > whole.len() as u64 {
        return Err(short_range(key, &range, whole.len() as u64));
    }
    Ok(whole.slice(range.start as usize..range.end as usize))
}

/// A ranged read that got fewer bytes than it asked for, whole: the object is shorter than
/// the caller knows it to be (a transfer cut on its way is an error of the transfer).
pub fn short_range(key: &str, range: &Range<u64>, got: u64) -> RemoteError {
    RemoteError::Short(format!(
        "object {key}: bytes {}..{} asked for, {got} there",
        range.start, range.end
    ))
}

/// Prefix under which chunk objects live.
pub const CHUNK_PREFIX: &str = "chunks/";

/// A fresh opaque object id: 128 random bits as 32 lowercase hex characters.
pub fn new_object_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The object key of a chunk object: `chunks/<first two hex digits>/<id>`. The fan-out
/// keeps directories of the local remote small and spreads S3 key prefixes.
pub fn object_key_for(object_id: &str) -> String {
    let fan = object_id.get(..2).unwrap_or(object_id);
    format!("{CHUNK_PREFIX}{fan}/{object_id}")
}

/// Checks that `key` is a non-empty relative `/`-separated path of printable ASCII with
/// no empty, `.`-leading (hidden, `.`, `..`) segments. Every store enforces this, so
/// the same keys are valid everywhere.
pub fn validate_key(key: &str) -> Result<(), RemoteError> {
    let bad = |why: &str| {
        Err(RemoteError::Permanent(format!(
            "invalid object key {key:?}: {why}"
        )))
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > 512 {
        return bad("longer than 512 bytes");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("only printable ASCII without spaces is allowed");
    }
    if key.contains('\\') {
        return bad("backslash");
    }
    for segment in key.split('/') {
        if segment.is_empty() {
            return bad("empty path segment (leading, trailing or double '/')");
        }
        if segment.starts_with('.') {
            return bad("segments must not start with '.'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_opaque_and_unique() {
        let a = new_object_id();
        let b = new_object_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        let key = object_key_for(&a);
        assert_eq!(key, format!("chunks/{}/{}", &a[..2], a));
        assert!(validate_key(&key).is_ok());
    }

    #[test]
    fn key_validation() {
        for ok in ["a", "chunks/ab/abcdef", "snapshot/latest.db", "a-b_c"] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/abs", "a/../b", "..", ".", "a//b", "a/", "sp ace", "é", "a\\b", ".hidden",
            "a/.tmp/x", "nul\0",
        ] {
            assert!(
                matches!(validate_key(bad), Err(RemoteError::Permanent(_))),
                "{bad:?}"
            );
        }
    }
}
