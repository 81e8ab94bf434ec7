//! The S3 remote configured the way users configure it: credentials from the standard
//! AWS environment variables, with `AWS_CA_BUNDLE` set. This binary changes its own
//! process environment, so it holds exactly one test (no other thread reads it).

mod common;

use bae::remote::{ObjectStore, RemoteError, S3Config, S3Store};
use bytes::Bytes;
use common::s3::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};

#[tokio::test(flavor = "current_thread")]
async fn s3_uses_the_standard_credential_chain() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(&dir.path().join("s3"));
    // Nothing outside this test may supply credentials, and nothing may leave 127.0.0.1.
    let empty = dir.path().join("no-aws-config");
    std::fs::write(&empty, "").unwrap();
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_ENDPOINT_URL",
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", &empty);
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &empty);
    // The machine-wide CA bundle must not disturb plain-HTTP endpoints.
    if std::env::var_os("AWS_CA_BUNDLE").is_none() {
        std::env::set_var("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt");
    }

    let cfg = S3Config {
        endpoint: Some(server.endpoint()),
        ..S3Config::new(BUCKET)
    };

    // No credentials anywhere: a clear, permanent error at construction.
    let err = S3Store::new(cfg.clone()).await.unwrap_err();
    let RemoteError::Permanent(msg) = &err else {
        panic!("expected Permanent, got {err:?}")
    };
    assert!(msg.contains("credentials") && msg.contains(BUCKET), "{msg}");

    // Credentials from the environment.
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    let store = S3Store::new(cfg).await.unwrap();
    store.check().await.unwrap();
    store.put("k", Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(store.get("k").await.unwrap(), Bytes::from_static(b"hello"));
    assert!(server.object_path(BUCKET, "k").is_file());
}
