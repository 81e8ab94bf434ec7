//! A small S3-protocol server for tests: serves a directory (one sub-directory per
//! bucket, one plain file per object, so tests can alter objects in place) on
//! 127.0.0.1 with a fixed test key pair.
//!
//! Usage: `s3_server ROOT [PORT] [ACCESS_KEY SECRET_KEY]`. PORT 0 (the default) picks a
//! free port. Prints `READY http://127.0.0.1:PORT` on stdout once it accepts connections.

use std::io::Write;
use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;

/// The key pair tests use unless they pass their own.
const TEST_ACCESS_KEY: &str = "bae-test-access-key";
const TEST_SECRET_KEY: &str = "bae-test-secret-key";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(args.first().ok_or("usage: s3_server ROOT [PORT] [AK SK]")?);
    let port: u16 = match args.get(1) {
        Some(p) => p.parse()?,
        None => 0,
    };
    let access_key = args
        .get(2)
        .map_or(TEST_ACCESS_KEY, String::as_str)
        .to_string();
    let secret_key = args
        .get(3)
        .map_or(TEST_SECRET_KEY, String::as_str)
        .to_string();

    std::fs::create_dir_all(&root)?;
    let fs = s3s_fs::FileSystem::new(&root)
        .map_err(|e| format!("cannot serve {}: {e:?}", root.display()))?;
    let service = {
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        builder.build()
    };

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let http = ConnBuilder::new(TokioExecutor::new());
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY http://{addr}")?;
        out.flush()?;
    }
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("s3_server: accept failed: {e}");
                continue;
            }
        };
        // As real object stores do: without it the tail segment of a response waits for
        // the client's delayed ACK (40 ms on Linux) behind Nagle's algorithm.
        if let Err(e) = socket.set_nodelay(true) {
            eprintln!("s3_server: TCP_NODELAY: {e}");
        }
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
