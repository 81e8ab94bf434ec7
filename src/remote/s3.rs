//! The S3 remote: an [`ObjectStore`] over any S3-compatible service through aws-sdk-s3.
//!
//! Why here: this is the only module that knows about the AWS SDK; everything above sees
//! [`RemoteError`] classified for the retry policy (`NotFound`, `Transient`, `Permanent`).
//!
//! Invariants and choices:
//! - Objects live under `<prefix>/<key>` in one bucket; `list` returns keys without it.
//! - The SDK's own retries are off: [`super::retry::Remote`] owns the retry policy, so
//!   attempts are not multiplied across two layers.
//! - Checksums are computed and validated only when an operation requires them, so plain
//!   S3-compatible servers that do not speak the newer CRC headers work. Integrity of
//!   content is guaranteed anyway by the AES-GCM tag of every object.
//! - Every request has a connect timeout and an overall deadline.

use std::ops::Range;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, ProvideCredentials, Region, RequestChecksumCalculation,
    ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{cut_range, short_range, validate_key, ObjectStore, RemoteError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Region used for signing when neither the config nor the environment names one
/// (S3-compatible servers usually accept any region).
const FALLBACK_REGION: &str = "us-east-1";

/// A static access key pair, for callers that do not use the standard AWS chain.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Credentials({}, redacted)", self.access_key_id)
    }
}

/// Where the S3 remote lives.
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (both are trimmed).
    pub prefix: String,
    /// Custom endpoint URL for S3-compatible services, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing; defaults to true when an endpoint is given.
    pub path_style: Option<bool>,
    /// Explicit credentials; `None` uses the standard AWS chain (env, profile, ...).
    pub credentials: Option<S3Credentials>,
}

impl S3Config {
    pub fn new(bucket: impl Into<String>) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            ..S3Config::default()
        }
    }
}

/// An object store in an S3 bucket.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    /// For error messages: the endpoint URL or "AWS S3".
    endpoint_name: String,
}

/// Which request an error came from; decides what a 404 means.
#[derive(Clone, Copy)]
enum Target<'a> {
    Object(&'a str),
    Bucket,
}

/// Most a GET body's buffer is sized for before its bytes arrive (the length is the
/// server's word until then).
const MAX_PREALLOCATED_BODY: usize = 64 << 20;

impl S3Store {
    /// Builds a client from the standard AWS configuration chain plus `cfg`. Fails with
    /// `Permanent` when no credentials can be found; bucket access is checked by
    /// [`S3Store::check`].
    pub async fn new(cfg: S3Config) -> Result<S3Store, RemoteError> {
        if cfg.bucket.is_empty() {
            return Err(RemoteError::Permanent("S3 bucket name is empty".into()));
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        // With a custom endpoint the region only matters for signing: take the config,
        // then the environment, then a fallback, and never probe EC2 instance metadata.
        let region = cfg.region.clone().or_else(|| {
            cfg.endpoint.as_ref().map(|_| {
                ["AWS_REGION", "AWS_DEFAULT_REGION"]
                    .iter()
                    .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
                    .unwrap_or_else(|| FALLBACK_REGION.to_string())
            })
        });
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        if let Some(c) = &cfg.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                None,
                None,
                "bae-config",
            ));
        }
        let shared = loader.load().await;
        let endpoint_name = cfg.endpoint.clone().unwrap_or_else(|| "AWS S3".to_string());

        match shared.credentials_provider() {
            Some(provider) => {
                if let Err(e) = provider.provide_credentials().await {
                    return Err(RemoteError::Permanent(format!(
                        "no usable S3 credentials for bucket {} at {endpoint_name} (set \
                         AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE): {}",
                        cfg.bucket,
                        error_chain(&e)
                    )));
                }
            }
            None => {
                return Err(RemoteError::Permanent(format!(
                    "no S3 credentials provider for bucket {} at {endpoint_name}",
                    cfg.bucket
                )))
            }
        }

        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            )
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if shared.region().is_none() {
            builder = builder.region(Region::new(FALLBACK_REGION));
        }
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        builder = builder.force_path_style(cfg.path_style.unwrap_or(cfg.endpoint.is_some()));

        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: cfg.bucket,
            prefix: cfg.prefix.trim_matches('/').to_string(),
            endpoint_name,
        })
    }

    /// Verifies that the bucket exists and the credentials may use it (HeadBucket), so
    /// `bae init` can report a bad bucket or bad credentials at once.
    pub async fn check(&self) -> Result<(), RemoteError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| self.map_error(e, Target::Bucket))?;
        Ok(())
    }

    /// One GET of `key` (of its bytes `range`, an HTTP range, if given): the body, the
    /// length the server announced, and whether it answered with a part (Content-Range).
    async fn get_body(
        &self,
        key: &str,
        range: Option<String>,
    ) -> Result<(Bytes, Option<i64>, bool), RemoteError> {
        let ranged = range.is_some();
        let resp = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .set_range(range)
            .send()
            .await
            .map_err(|e| {
                // 416: the range begins past the object's end.
                if ranged && e.raw_response().is_some_and(|r| r.status().as_u16() == 416) {
                    RemoteError::Short(format!("object {key}: the range asked for is past its end"))
                } else {
                    self.map_error(e, Target::Object(key))
                }
            })?;
        let (len, part) = (resp.content_length(), resp.content_range().is_some());
        // Into one buffer of the announced size as the body arrives: one copy, and a
        // `Bytes` the caller can turn back into a `Vec` without another (decryption is
        // in place).
        let announced = len.and_then(|l| usize::try_from(l).ok()).unwrap_or(0);
        let mut data = Vec::with_capacity(announced.min(MAX_PREALLOCATED_BODY));
        let mut body = resp.body;
        loop {
            match body.try_next().await {
                Ok(Some(frame)) => data.extend_from_slice(&frame),
                Ok(None) => break,
                Err(e) => {
                    return Err(RemoteError::Transient(format!(
                        "reading object {key} from bucket {} at {} was interrupted: {e}",
                        self.bucket, self.endpoint_name
                    )))
                }
            }
        }
        Ok((Bytes::from(data), len, part))
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn map_error<E>(&self, err: SdkError<E, HttpResponse>, target: Target<'_>) -> RemoteError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let place = format!("bucket {} at {}", self.bucket, self.endpoint_name);
        let detail = error_chain(&err);
        match &err {
            SdkError::ConstructionFailure(_) => {
                RemoteError::Permanent(format!("S3 request for {place} is invalid: {detail}"))
            }
            SdkError::TimeoutError(_) => {
                RemoteError::Transient(format!("S3 request to {place} timed out"))
            }
            SdkError::DispatchFailure(d) if d.is_user() => {
                RemoteError::Permanent(format!("S3 request for {place} failed: {detail}"))
            }
            SdkError::DispatchFailure(_) => {
                RemoteError::Transient(format!("cannot reach {place}: {detail}"))
            }
            SdkError::ResponseError(_) => RemoteError::Transient(format!(
                "bad or interrupted response from {place}: {detail}"
            )),
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code().unwrap_or("");
                classify_service_error(status, code, target, &place, &detail)
            }
            _ => RemoteError::Transient(format!("S3 request to {place} failed: {detail}")),
        }
    }
}

/// An error and its sources as one line (`outer: inner: root cause`), without the
/// Debug dump the SDK's own formatter appends.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        // First lines only: some SDK errors append multi-line listings.
        let text = e
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end_matches(':')
            .to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Classifies an error response by HTTP status and S3 error code.
fn classify_service_error(
    status: u16,
    code: &str,
    target: Target<'_>,
    place: &str,
    detail: &str,
) -> RemoteError {
    const TRANSIENT_CODES: &[&str] = &[
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        // The body was damaged on its way (a truncating proxy): sending it again helps.
        "BadDigest",
        "IncompleteBody",
        "XAmzContentSHA256Mismatch",
    ];
    const AUTH_CODES: &[&str] = &[
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
    ];
    if code == "NoSuchBucket" || (status == 404 && matches!(target, Target::Bucket)) {
        return RemoteError::Permanent(format!("{place}: the bucket does not exist"));
    }
    if status == 404 || code == "NoSuchKey" {
        if let Target::Object(key) = target {
            return RemoteError::NotFound(key.to_string());
        }
    }
    if status >= 500 || status == 429 || status == 408 || TRANSIENT_CODES.contains(&code) {
        return RemoteError::Transient(format!("{place} is unavailable ({status} {code})"));
    }
    if status == 403 || status == 401 || AUTH_CODES.contains(&code) {
        return RemoteError::Permanent(format!(
            "access to {place} denied ({status} {code}): check the S3 credentials \
             (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and the bucket policy"
        ));
    }
    RemoteError::Permanent(format!(
        "S3 request to {place} rejected ({status} {code}): {detail}"
    ))
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), RemoteError> {
        validate_key(key)?;
        // The server checks the body against this checksum and refuses a body that was
        // cut short or altered on the way; a bare 200 OK proves nothing.
        let checksum = {
            use base64::Engine as _;
            use sha2::Digest as _;
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&body))
        };
        let resp = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .checksum_sha256(&checksum)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.map_error(e, Target::Object(key)))?;
        if let Some(echoed) = resp.checksum_sha256() {
            if echoed != checksum {
                return Err(RemoteError::Transient(format!(
                    "object {key}: the server stored a body with another checksum"
                )));
            }
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, RemoteError> {
        validate_key(key)?;
        let (data, expected_len, _) = self.get_body(key, None).await?;
        if let Some(expected) = expected_len {
            if u64::try_from(expected).ok() != Some(data.len() as u64) {
                return Err(RemoteError::Transient(format!(
                    "object {key}: got {} of {expected} bytes",
                    data.len()
                )));
            }
        }
        Ok(data)
    }

    fn ranges_in_parallel_help(&self) -> bool {
        true
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, RemoteError> {
        validate_key(key)?;
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let asked = format!("bytes={}-{}", range.start, range.end - 1);
        let (data, _, part) = self.get_body(key, Some(asked)).await?;
        if !part {
            // A server that ignores the range sends the whole object: cut it here.
            return cut_range(key, data, range);
        }
        if data.len() as u64 == range.end - range.start {
            return Ok(data);
        }
        Err(short_range(key, &range, range.start + data.len() as u64))
    }

    async fn delete(&self, key: &str) -> Result<(), RemoteError> {
        validate_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.map_error(e, Target::Object(key)))
        {
            Ok(_) | Err(RemoteError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        let full_prefix = self.full_key(prefix);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.map_error(e, Target::Bucket))?;
            for object in resp.contents() {
                if let Some(key) = object.key().and_then(|k| k.get(strip..)) {
                    keys.push(key.to_string());
                }
            }
            match resp.next_continuation_token() {
                Some(next) if resp.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, code: &str, target: Target<'_>) -> RemoteError {
        classify_service_error(status, code, target, "bucket b at e", "detail")
    }

    #[test]
    fn service_errors_are_classified() {
        let obj = Target::Object("k");
        assert_eq!(
            classify(404, "NoSuchKey", obj),
            RemoteError::NotFound("k".into())
        );
        assert_eq!(classify(404, "", obj), RemoteError::NotFound("k".into()));
        assert!(matches!(
            classify(404, "", Target::Bucket),
            RemoteError::Permanent(_)
        ));
        assert!(matches!(
            classify(404, "NoSuchBucket", obj),
            RemoteError::Permanent(_)
        ));
        for (status, code) in [
            (503, "SlowDown"),
            (500, "InternalError"),
            (429, ""),
            (400, "RequestTimeout"),
        ] {
            assert!(
                classify(status, code, obj).is_transient(),
                "{status} {code}"
            );
        }
        for (status, code) in [
            (403, "InvalidAccessKeyId"),
            (403, "SignatureDoesNotMatch"),
            (400, "InvalidArgument"),
        ] {
            assert!(
                matches!(classify(status, code, obj), RemoteError::Permanent(_)),
                "{status} {code}"
            );
        }
        let msg = classify(403, "AccessDenied", obj).to_string();
        assert!(
            msg.contains("bucket b at e") && msg.contains("credentials"),
            "{msg}"
        );
    }
}
