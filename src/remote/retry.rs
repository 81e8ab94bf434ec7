//! [`Remote`]: the wrapper every other module uses to reach an object store. It bounds
//! the number of requests in flight and retries transient failures with exponential
//! backoff and full jitter. Also [`FaultyStore`], a wrapper that injects failures and
//! latency into any store, for tests of the layers above.
//!
//! Invariants:
//! - At most `max_concurrent_requests` calls reach the inner store at once; a permit is
//!   held only for one attempt, never while sleeping between attempts.
//! - Only `Transient` errors are retried; `NotFound` and `Permanent` return at once.
//! - A call ends after `max_attempts` attempts or once the next sleep would cross
//!   `total_deadline`, returning the last error.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;
use tokio::sync::Semaphore;

use super::{ObjectStore, RemoteError};

/// When and how often to retry transient failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first one included (at least 1).
    pub max_attempts: u32,
    /// Upper bound of the first backoff; doubles with every retry.
    pub base_delay_ms: u64,
    /// Cap on a single backoff.
    pub max_delay_ms: u64,
    /// Give up once this much time has passed since the call started.
    pub total_deadline_ms: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay_ms: 100,
            max_delay_ms: 10_000,
            total_deadline_ms: Some(120_000),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The backoff ceiling before retry number `retry` (0-based): `base * 2^retry`,
    /// capped at `max_delay_ms`.
    pub fn backoff_ceiling_ms(&self, retry: u32) -> u64 {
        let factor = 1u64.checked_shl(retry.min(63)).unwrap_or(u64::MAX);
        self.base_delay_ms
            .saturating_mul(factor)
            .min(self.max_delay_ms)
    }

    /// A full-jitter backoff: uniform in `[0, ceiling]`.
    fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.backoff_ceiling_ms(retry);
        Duration::from_millis(rand::rng().random_range(0..=ceiling))
    }
}

/// How a [`Remote`] treats its store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteOptions {
    pub max_concurrent_requests: usize,
    pub retry: RetryPolicy,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            max_concurrent_requests: 16,
            retry: RetryPolicy::default(),
        }
    }
}

/// An object store with bounded concurrency and retries. Cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    permits: Arc<Semaphore>,
    policy: RetryPolicy,
}

impl Remote {
    pub fn new(store: Arc<dyn ObjectStore>, options: RemoteOptions) -> Remote {
        Remote {
            store,
            permits: Arc::new(Semaphore::new(options.max_concurrent_requests.max(1))),
            policy: options.retry,
        }
    }

    /// The wrapped store (no retries, no concurrency bound).
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    async fn with_retries<T, F, Fut>(
        &self,
        op: &str,
        key: &str,
        mut call: F,
    ) -> Result<T, RemoteError>
    where
        F: FnMut(Arc<dyn ObjectStore>) -> Fut,
        Fut: std::future::Future<Output = Result<T, RemoteError>>,
    {
        let started = Instant::now();
        let max_attempts = self.policy.max_attempts.max(1);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let attempt_started = Instant::now();
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| RemoteError::Permanent("remote is shut down".into()))?;
                call(self.store.clone()).await
            };
            crate::daemon::metrics::remote_request(op, attempt_started.elapsed(), &result);
            let err = match result {
                Ok(value) => return Ok(value),
                Err(err) if !err.is_transient() => return Err(err),
                Err(err) => err,
            };
            if attempt >= max_attempts {
                tracing::warn!(op, key, attempt, error = %err, "remote: giving up after retries");
                return Err(err);
            }
            let delay = self.policy.backoff(attempt - 1);
            if let Some(deadline_ms) = self.policy.total_deadline_ms {
                if started.elapsed() + delay > Duration::from_millis(deadline_ms) {
                    tracing::warn!(op, key, attempt, error = %err, "remote: retry deadline reached");
                    return Err(err);
                }
            }
            tracing::debug!(op, key, attempt, delay_ms = delay.as_millis() as u64, error = %err, "remote: retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

#[async_trait]
impl ObjectStore for Remote {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), RemoteError> {
        self.with_retries("put", key, |s| {
            let body = body.clone();
            async move { s.put(key, body).await }
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, RemoteError> {
        self.with_retries("get", key, |s| async move { s.get(key).await })
            .await
    }

    fn ranges_in_parallel_help(&self) -> bool {
        self.store.ranges_in_parallel_help()
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, RemoteError> {
        self.with_retries("get", key, |s| {
            let range = range.clone();
            async move { s.get_range(key, range).await }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), RemoteError> {
        self.with_retries("delete", key, |s| async move { s.delete(key).await })
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        self.with_retries("list", prefix, |s| async move { s.list(prefix).await })
            .await
    }
}

/// Wraps a store and injects faults: the next N calls fail with `Transient` (or
/// `Permanent`), and every call can be delayed. Counts calls, so tests can check retries.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    fail_transient: AtomicU32,
    fail_permanent: AtomicU32,
    latency_ms: AtomicU64,
    calls: AtomicU64,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> FaultyStore {
        FaultyStore {
            inner,
            fail_transient: AtomicU32::new(0),
            fail_permanent: AtomicU32::new(0),
            latency_ms: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            max_in_flight: AtomicU32::new(0),
        }
    }

    /// The next `n` calls fail with `Transient` without reaching the inner store.
    pub fn fail_next(&self, n: u32) {
        self.fail_transient.store(n, Ordering::SeqCst);
    }

    /// The next `n` calls fail with `Permanent` (checked after the transient failures).
    pub fn fail_next_permanent(&self, n: u32) {
        self.fail_permanent.store(n, Ordering::SeqCst);
    }

    /// Every call first sleeps this long.
    pub fn set_latency_ms(&self, latency_ms: u64) {
        self.latency_ms.store(latency_ms, Ordering::SeqCst);
    }

    /// Calls received so far, failed ones included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The largest number of calls that were running at the same time.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    async fn enter(&self, op: &str, key: &str) -> Result<InFlight<'_>, RemoteError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(&self.in_flight);
        let latency_ms = self.latency_ms.load(Ordering::SeqCst);
        if latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(latency_ms)).await;
        }
        if Self::take(&self.fail_transient) {
            return Err(RemoteError::Transient(format!(
                "injected fault in {op} {key}"
            )));
        }
        if Self::take(&self.fail_permanent) {
            return Err(RemoteError::Permanent(format!(
                "injected fault in {op} {key}"
            )));
        }
        Ok(guard)
    }
}

/// Decrements the in-flight count when a call ends, however it ends.
struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), RemoteError> {
        let _g = self.enter("put", key).await?;
        self.inner.put(key, body).await
    }

    async fn get(&self, key: &str) -> Result<Bytes, RemoteError> {
        let _g = self.enter("get", key).await?;
        self.inner.get(key).await
    }

    fn ranges_in_parallel_help(&self) -> bool {
        self.inner.ranges_in_parallel_help()
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, RemoteError> {
        let _g = self.enter("get", key).await?;
        self.inner.get_range(key, range).await
    }

    async fn delete(&self, key: &str) -> Result<(), RemoteError> {
        let _g = self.enter("delete", key).await?;
        self.inner.delete(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        let _g = self.enter("list", prefix).await?;
        self.inner.list(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::LocalDirStore;

    fn fast(max_attempts: u32) -> RemoteOptions {
        RemoteOptions {
            max_concurrent_requests: 4,
            retry: RetryPolicy {
                max_attempts,
                base_delay_ms: 1,
                max_delay_ms: 5,
                total_deadline_ms: None,
            },
        }
    }

    fn faulty() -> (tempfile::TempDir, Arc<FaultyStore>) {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalDirStore::new(dir.path()).unwrap();
        (dir, Arc::new(FaultyStore::new(Arc::new(local))))
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay_ms: 100,
            max_delay_ms: 1000,
            total_deadline_ms: None,
        };
        assert_eq!(p.backoff_ceiling_ms(0), 100);
        assert_eq!(p.backoff_ceiling_ms(1), 200);
        assert_eq!(p.backoff_ceiling_ms(3), 800);
        assert_eq!(p.backoff_ceiling_ms(4), 1000);
        assert_eq!(p.backoff_ceiling_ms(200), 1000);
        for retry in 0..10 {
            assert!(p.backoff(retry).as_millis() as u64 <= p.backoff_ceiling_ms(retry));
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried() {
        let (_dir, store) = faulty();
        let remote = Remote::new(store.clone(), fast(5));
        store.fail_next(3);
        remote.put("a", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(store.calls(), 4);
        assert_eq!(remote.get("a").await.unwrap(), Bytes::from_static(b"x"));
    }

    #[tokio::test]
    async fn retries_stop_at_max_attempts() {
        let (_dir, store) = faulty();
        let remote = Remote::new(store.clone(), fast(3));
        store.fail_next(10);
        assert!(remote.get("a").await.unwrap_err().is_transient());
        assert_eq!(store.calls(), 3);
    }

    #[tokio::test]
    async fn permanent_and_not_found_are_not_retried() {
        let (_dir, store) = faulty();
        let remote = Remote::new(store.clone(), fast(5));
        assert!(remote.get("missing").await.unwrap_err().is_not_found());
        assert_eq!(store.calls(), 1);
        store.fail_next_permanent(1);
        assert!(matches!(
            remote.put("a", Bytes::new()).await,
            Err(RemoteError::Permanent(_))
        ));
        assert_eq!(store.calls(), 2);
    }

    #[tokio::test]
    async fn deadline_stops_retries() {
        let (_dir, store) = faulty();
        let mut options = fast(1000);
        options.retry.base_delay_ms = 50;
        options.retry.max_delay_ms = 50;
        options.retry.total_deadline_ms = Some(0);
        let remote = Remote::new(store.clone(), options);
        store.fail_next(1000);
        assert!(remote.get("a").await.unwrap_err().is_transient());
        assert!(store.calls() < 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_is_bounded() {
        let (_dir, store) = faulty();
        store.set_latency_ms(20);
        let remote = Remote::new(store.clone(), fast(1));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let remote = remote.clone();
            tasks.push(tokio::spawn(async move {
                remote.put(&format!("k{i}"), Bytes::from_static(b"v")).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.calls(), 20);
        assert!(store.max_in_flight() <= 4, "{}", store.max_in_flight());
        assert!(store.max_in_flight() >= 2, "{}", store.max_in_flight());
    }
}
