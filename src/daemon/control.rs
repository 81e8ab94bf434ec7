//! The control socket: `$BAE_HOME/control.sock`, one JSON request and one JSON
//! response per line. CLI commands change the catalog themselves (so they work without
//! a daemon and are durable when they return) and then ask a running daemon to `Sync`;
//! live numbers (`Status`) and actions on the running process go through here too.
//! A long request (`Verify`, `Import`, `Wait`) may send `Progress` lines (`done` of `total`
//! units: checks, bytes) before its one final response; the handler reports them with
//! [`report_progress`] (or [`progress_reporter`] off its task), a no-op outside a
//! request.
//!
//! Who may talk to it: the socket is mode 0600 in a 0700 `$BAE_HOME`, and every
//! connection's peer credentials (SO_PEERCRED) must be the daemon's own uid or root;
//! anyone else gets one error line and is disconnected. A request is at most
//! [`MAX_REQUEST_BYTES`] and must arrive within [`REQUEST_READ_TIMEOUT`].

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::store::CacheStats;
use crate::tiering::UploaderStatus;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Status,
    /// Re-read the catalog: new, removed, paused or re-flagged torrents. `torrents`
    /// names the ones that changed; empty (or absent) means re-read it all.
    Sync {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        torrents: Vec<i64>,
    },
    /// Drop every evictable chunk from the cache.
    Evict,
    Verify {
        torrent: i64,
    },
    /// Replace damaged copies found by `Verify` (chunk indices).
    Repair {
        torrent: i64,
        bad_local: Vec<u32>,
        bad_remote: Vec<u32>,
    },
    /// Store the content of `dir` as torrent `torrent` (already in the catalog) and seed.
    Import {
        torrent: i64,
        dir: String,
    },
    /// Answers once the torrent is fully verified (`Done`), or with `Error` when it fails
    /// or is removed. Its verified bytes go out as progress meanwhile, at least once a
    /// second; a client that went away ends the request.
    Wait {
        torrent: i64,
    },
    /// Unmount and stop. `lazy` detaches a busy mount instead of failing.
    Shutdown {
        lazy: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Pong {
        pid: u32,
        mountpoint: String,
    },
    Status(Box<StatusReport>),
    Done {
        message: String,
    },
    Verify(VerifyReport),
    Repaired(crate::store::RepairSummary),
    Error {
        message: String,
    },
    /// Sent before the final response of a long request; never a final response.
    Progress {
        done: u64,
        total: u64,
    },
}

/// Largest request the daemon reads (requests are small JSON objects).
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// A client that does not finish its request line within this is dropped.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

tokio::task_local! {
    static PROGRESS: mpsc::UnboundedSender<(u64, u64)>;
}

/// Reports the progress of the request being handled to its client (`done` of `total`
/// units). Does nothing when not called from inside a control request.
pub fn report_progress(done: u64, total: u64) {
    let _ = PROGRESS.try_with(|tx| tx.send((done, total)));
}

/// [`report_progress`] for work moved off the request's task (`spawn_blocking`), where
/// the task-local channel is not visible: take it here, call it there.
pub fn progress_reporter() -> impl FnMut(u64, u64) + Send + 'static {
    let tx = PROGRESS.try_with(|tx| tx.clone()).ok();
    move |done, total| {
        if let Some(tx) = &tx {
            let _ = tx.send((done, total));
        }
    }
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
    /// Chunks with every piece verified (uploaded or not): only these can go to the
    /// remote, and leave the cache after.
    #[serde(default)]
    pub chunks_complete: u32,
    pub chunks_uploaded: u32,
    pub seeding: bool,
    pub pinned: bool,
    pub paused: bool,
    pub error: Option<String>,
    /// Bytes received from / sent to peers since the daemon started (0 without one).
    #[serde(default)]
    pub peer_downloaded_bytes: u64,
    #[serde(default)]
    pub peer_uploaded_bytes: u64,
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

/// What `bae verify` found. Indices name what a repair must act on: `bad_pieces` are
/// local pieces that fail the torrent's own hash (or cannot be read),
/// `bad_local_chunks` local chunk files that no longer match their recorded hash,
/// `bad_remote_chunks` and `missing_remote_chunks` remote objects that fail
/// authentication or are gone, `unreachable_remote_chunks` ones the remote did not
/// answer for (not known to be bad).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyReport {
    pub pieces_total: u32,
    /// Local pieces read and checked against the torrent's hashes.
    pub pieces_checked: u32,
    pub pieces_ok: u32,
    /// Verified pieces that no hash covers (e.g. v2 metadata without piece layers).
    pub pieces_uncheckable: u32,
    /// Local chunk files re-hashed against their recorded hash, plus remote objects.
    pub chunks_checked: u32,
    pub chunks_ok: u32,
    pub chunks_missing: u32,
    pub bad_pieces: Vec<u32>,
    pub bad_local_chunks: Vec<u32>,
    pub bad_remote_chunks: Vec<u32>,
    pub missing_remote_chunks: Vec<u32>,
    pub unreachable_remote_chunks: Vec<u32>,
    /// One line per problem, for people.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
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
    call_with_progress(socket, req, timeout, &mut |_, _| {}).await
}

/// [`call`], passing each `Progress` line of a long request to `on_progress`.
pub async fn call_with_progress(
    socket: &Path,
    req: &Request,
    timeout: Duration,
    on_progress: &mut (dyn FnMut(u64, u64) + Send),
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
        // A daemon that refuses us answers and hangs up without reading: its answer
        // says more than the broken pipe.
        let sent = w.write_all(line.as_bytes()).await;
        let mut reader = BufReader::new(r);
        if let Err(e) = sent {
            let mut answer = String::new();
            return match reader.read_line(&mut answer).await {
                Ok(n) if n > 0 => serde_json::from_str(&answer).map_err(|_| e.into()),
                _ => Err(e.into()),
            };
        }
        loop {
            let mut answer = String::new();
            if reader.read_line(&mut answer).await? == 0 {
                return Err(ControlError::Protocol(
                    "the daemon closed the connection".into(),
                ));
            }
            match serde_json::from_str(&answer) {
                Ok(Response::Progress { done, total }) => on_progress(done, total),
                Ok(r) => return Ok(r),
                Err(e) => return Err(ControlError::Protocol(format!("{e}: {answer:?}"))),
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ControlError::Timeout(timeout))?
}

/// Binds the control socket at `path` (replacing a stale one), owner-only.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    restrict_mode(path)?;
    Ok(listener)
}

fn restrict_mode(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Whether a peer with `uid` may use the daemon: its own user, or root.
fn peer_allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    uid == own || uid == 0
}

/// Serves requests on `listener` until the task is dropped, answering with `handle`.
/// The socket file is made owner-only first (whoever bound it).
pub async fn serve<F, Fut>(listener: tokio::net::UnixListener, handle: F)
where
    F: Fn(Request) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    if let Some(path) = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
    {
        if let Err(e) = restrict_mode(&path) {
            tracing::warn!(socket = %path.display(), error = %e, "cannot make the control socket owner-only");
        }
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move { serve_one(stream, handle).await });
    }
}

async fn serve_one<F, Fut>(stream: UnixStream, handle: F)
where
    F: Fn(Request) -> Fut,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    let peer = stream.peer_cred();
    let (r, mut w) = stream.into_split();
    let send = |resp: &Response| {
        let mut out = serde_json::to_string(resp).unwrap_or_else(|_| "{}".into());
        out.push('\n');
        out
    };
    match peer {
        Ok(cred) if peer_allowed(cred.uid()) => {}
        other => {
            let who = match &other {
                Ok(c) => format!("uid {} (pid {:?})", c.uid(), c.pid()),
                Err(e) => format!("an unknown peer ({e})"),
            };
            tracing::warn!("control socket: refused a connection from {who}");
            let resp = Response::Error {
                message: format!(
                    "refused: this daemon only answers its own user and root, not {who}"
                ),
            };
            let _ = w.write_all(send(&resp).as_bytes()).await;
            return;
        }
    }
    let mut reader = BufReader::new(r).take(MAX_REQUEST_BYTES + 1);
    let mut line = Vec::new();
    let read = tokio::time::timeout(REQUEST_READ_TIMEOUT, reader.read_until(b'\n', &mut line));
    let resp = match read.await {
        Err(_) => Response::Error {
            message: format!("no complete request within {REQUEST_READ_TIMEOUT:?}"),
        },
        Ok(Err(_)) => return,
        Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST_BYTES => Response::Error {
            message: format!("request too large (the limit is {MAX_REQUEST_BYTES} bytes)"),
        },
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Ok(req) => {
                // Only waiting is given up with its client: other work goes on.
                let ends_with_client = matches!(req, Request::Wait { .. });
                let (tx, mut rx) = mpsc::unbounded_channel();
                let fut = PROGRESS.scope(tx, handle(req));
                tokio::pin!(fut);
                loop {
                    tokio::select! {
                        resp = &mut fut => {
                            // The last count (usually "all done") still goes out first.
                            let mut last = None;
                            while let Ok(p) = rx.try_recv() {
                                last = Some(p);
                            }
                            if let Some((done, total)) = last {
                                let line = send(&Response::Progress { done, total });
                                let _ = w.write_all(line.as_bytes()).await;
                            }
                            break resp;
                        }
                        Some((mut done, mut total)) = rx.recv() => {
                            // Only the latest of a burst matters.
                            while let Ok((d, t)) = rx.try_recv() {
                                (done, total) = (d, t);
                            }
                            let line = send(&Response::Progress { done, total });
                            // A client that went away does not stop the work.
                            if w.write_all(line.as_bytes()).await.is_err() && ends_with_client {
                                return;
                            }
                        }
                    }
                }
            }
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        },
    };
    let _ = w.write_all(send(&resp).as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's progress reaches its client, from its task and from a blocking
    /// thread, and the last count always precedes the final response.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn progress_lines_end_with_the_last_count_before_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = bind(&path).unwrap();
        let server = tokio::spawn(serve(listener, |req| async move {
            match req {
                Request::Verify { .. } => {
                    for i in 0..=1000 {
                        report_progress(i, 1000);
                    }
                }
                _ => {
                    let mut report = progress_reporter();
                    tokio::task::spawn_blocking(move || {
                        for i in 0..=500 {
                            report(i, 500);
                        }
                    })
                    .await
                    .unwrap();
                }
            }
            Response::Done {
                message: "ok".into(),
            }
        }));
        for (req, total) in [
            (Request::Verify { torrent: 1 }, 1000),
            (
                Request::Import {
                    torrent: 1,
                    dir: "/x".into(),
                },
                500,
            ),
        ] {
            let mut seen = Vec::new();
            let resp = call_with_progress(&path, &req, Duration::from_secs(10), &mut |d, t| {
                seen.push((d, t))
            })
            .await
            .unwrap();
            assert!(matches!(resp, Response::Done { .. }), "{resp:?}");
            assert_eq!(seen.last(), Some(&(total, total)), "{req:?}: {seen:?}");
            assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
        }
        server.abort();
    }

    /// A `Wait` whose client hung up is dropped at its next progress line; other work
    /// (an `Import`) goes on to its end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_ends_with_its_client_and_other_work_does_not() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = bind(&path).unwrap();
        // Per request kind: progress lines sent, and whether the handler ran to its end.
        let beats = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let ended = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let (b, e) = (Arc::clone(&beats), Arc::clone(&ended));
        let server = tokio::spawn(serve(listener, move |req| {
            let (b, e) = (Arc::clone(&b), Arc::clone(&e));
            async move {
                let k = usize::from(matches!(req, Request::Import { .. }));
                for i in 0..100u64 {
                    report_progress(i, 100);
                    b[k].fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                e[k].fetch_add(1, Ordering::SeqCst);
                Response::Done {
                    message: "ok".into(),
                }
            }
        }));
        for req in [
            Request::Wait { torrent: 1 },
            Request::Import {
                torrent: 1,
                dir: "/x".into(),
            },
        ] {
            // The client gives up after its first progress line.
            let mut first = |_: u64, _: u64| {};
            let r = call_with_progress(&path, &req, Duration::from_millis(150), &mut first).await;
            assert!(matches!(r, Err(ControlError::Timeout(_))), "{r:?}");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            ended[0].load(Ordering::SeqCst),
            0,
            "the wait ran to its end"
        );
        assert!(
            beats[0].load(Ordering::SeqCst) < 50,
            "the wait went on without its client"
        );
        assert_eq!(
            ended[1].load(Ordering::SeqCst),
            1,
            "the import was given up"
        );
        server.abort();
    }
}
