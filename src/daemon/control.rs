//! The control socket: `$BAE_HOME/control.sock`, one JSON request and one JSON
//! response per line. CLI commands change the catalog themselves (so they work without
//! a daemon and are durable when they return) and then ask a running daemon to `Sync`;
//! live numbers (`Status`) and actions on the running process go through here too.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::store::CacheStats;
use crate::tiering::UploaderStatus;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Status,
    /// Re-read the catalog: new, removed, paused or re-flagged torrents.
    Sync,
    /// Drop every evictable chunk from the cache.
    Evict,
    Verify {
        torrent: i64,
    },
    /// Store the content of `dir` as torrent `torrent` (already in the catalog) and seed.
    Import {
        torrent: i64,
        dir: String,
    },
    /// Unmount and stop. `lazy` detaches a busy mount instead of failing.
    Shutdown {
        lazy: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Pong { pid: u32, mountpoint: String },
    Status(Box<StatusReport>),
    Done { message: String },
    Verify(VerifyReport),
    Error { message: String },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TorrentReport {
    pub id: i64,
    pub name: String,
    pub info_hash: String,
    pub size_bytes: u64,
    /// 0.0 ..= 1.0 (verified bytes / size).
    pub progress: f64,
    pub download_bps: u64,
    pub upload_bps: u64,
    pub peers: u32,
    pub state: String,
    pub chunks_total: u32,
    pub chunks_local: u32,
    pub chunks_uploaded: u32,
    pub seeding: bool,
    pub pinned: bool,
    pub paused: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub daemon_running: bool,
    pub mountpoint: Option<String>,
    pub listen_port: Option<u16>,
    pub torrents: Vec<TorrentReport>,
    pub cache: CacheStats,
    pub cache_limit_bytes: u64,
    pub uploader: Option<UploaderStatus>,
    /// Damaged local chunks, failed remote fetches (since the daemon started).
    #[serde(default)]
    pub integrity: crate::store::IntegrityStats,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub chunks_checked: u32,
    pub chunks_ok: u32,
    pub chunks_missing: u32,
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no daemon is running for this library")]
    NotRunning,
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("control socket: bad message: {0}")]
    Protocol(String),
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
}

/// Sends one request to the daemon of the library whose socket is `socket`.
pub async fn call(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    let fut = async {
        let stream = match UnixStream::connect(socket).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ControlError::NotRunning)
            }
            Err(e) => return Err(e.into()),
        };
        let (r, mut w) = stream.into_split();
        let mut line =
            serde_json::to_string(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
        line.push('\n');
        w.write_all(line.as_bytes()).await?;
        let mut reader = BufReader::new(r);
        let mut answer = String::new();
        reader.read_line(&mut answer).await?;
        serde_json::from_str(&answer)
            .map_err(|e| ControlError::Protocol(format!("{e}: {answer:?}")))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ControlError::Timeout(timeout))?
}

/// Serves requests on `socket` until the task is dropped, answering with `handle`.
pub async fn serve<F, Fut>(listener: tokio::net::UnixListener, handle: F)
where
    F: Fn(Request) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Response> + Send,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut reader = BufReader::new(r);
            let mut line = String::new();
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(req) => handle(req).await,
                Err(e) => Response::Error {
                    message: format!("bad request: {e}"),
                },
            };
            if let Ok(mut out) = serde_json::to_string(&resp) {
                out.push('\n');
                let _ = w.write_all(out.as_bytes()).await;
            }
        });
    }
}
