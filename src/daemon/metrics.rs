//! Prometheus/OpenMetrics text at `http://ADDR/metrics` (`--metrics ADDR`,
//! `metrics_addr`), off by default and loopback-only unless `metrics_allow_remote`.
//!
//! Two sources, so `bae status` and a scrape tell the same story:
//! - the daemon's status report, gathered at scrape time (rates, peers, cache, chunks,
//!   uploads, integrity): the same numbers `bae status` shows;
//! - a small process-wide [`sink`] of what no status holds (remote request latency and
//!   errors, FUSE read latency and failures, reads that waited for pieces, bytes moved
//!   to and from peers), fed by one-call hooks in the remote, FUSE and storage layers.
//!   Recording is a few atomic operations and happens whether or not anyone scrapes.
//!
//! The HTTP side is a minimal HTTP/1.1 responder: one request per connection, a bounded
//! request head read within a deadline, `GET /metrics` (or `/`) answered, 404 otherwise.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::config::Config;
use super::control::StatusReport;
use crate::fs::{ContentError, FsError};
use crate::remote::RemoteError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpErrorLabel {
    op: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TorrentLabel {
    torrent: String,
    info_hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChunkLabel {
    torrent: String,
    info_hash: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What the hooks record. Clones of these handles share their values.
pub struct Sink {
    remote_seconds: HistogramFamily<OpLabel>,
    remote_errors: Family<OpErrorLabel, Counter>,
    fuse_read_seconds: Histogram,
    fuse_read_errors: Family<KindLabel, Counter>,
    fuse_read_bytes: Counter,
    reads_waited: Counter,
    /// Bytes libtorrent wrote (from peers) and read (for peers), per torrent id.
    peer_bytes: Mutex<HashMap<i64, (u64, u64)>>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The process-wide sink.
pub fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| Sink {
        remote_seconds: Family::new_with_constructor(latency_histogram),
        remote_errors: Family::default(),
        fuse_read_seconds: latency_histogram(),
        fuse_read_errors: Family::default(),
        fuse_read_bytes: Counter::default(),
        reads_waited: Counter::default(),
        peer_bytes: Mutex::new(HashMap::new()),
    })
}

/// Hook: one attempt of a remote request (`op`: put, get, delete, list) ended.
pub fn remote_request<T>(op: &str, elapsed: Duration, result: &Result<T, RemoteError>) {
    let s = sink();
    s.remote_seconds
        .get_or_create(&OpLabel { op: op.into() })
        .observe(elapsed.as_secs_f64());
    if let Err(e) = result {
        let error = match e {
            RemoteError::NotFound(_) => "not_found",
            RemoteError::Transient(_) => "transient",
            RemoteError::Permanent(_) => "permanent",
            RemoteError::Short(_) => "short",
        };
        s.remote_errors
            .get_or_create(&OpErrorLabel {
                op: op.into(),
                error: error.into(),
            })
            .inc();
    }
}

/// Hook: times one FUSE read and counts how it ended; returns its result unchanged.
pub async fn fuse_read<F>(read: F) -> Result<bytes::Bytes, FsError>
where
    F: std::future::Future<Output = Result<bytes::Bytes, FsError>>,
{
    let started = Instant::now();
    let result = read.await;
    let s = sink();
    s.fuse_read_seconds.observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(b) => {
            s.fuse_read_bytes.inc_by(b.len() as u64);
        }
        Err(e) => {
            let kind = match e {
                FsError::Content(ContentError::Timeout) => "timeout",
                FsError::Content(ContentError::Integrity(_)) => "integrity",
                _ if e.errno() == libc::EIO => "eio",
                _ => "other",
            };
            s.fuse_read_errors
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc();
        }
    }
    result
}

/// Hook: a read had to wait for pieces not downloaded yet.
pub fn read_waited_for_pieces() {
    sink().reads_waited.inc();
}

/// Hook: libtorrent moved `down` bytes from peers / `up` bytes for peers of torrent `t`.
pub fn peer_bytes(t: i64, down: u64, up: u64) {
    let mut m = sink().peer_bytes.lock().unwrap_or_else(|e| e.into_inner());
    let e = m.entry(t).or_default();
    e.0 += down;
    e.1 += up;
}

/// Bytes from and to peers of torrent `t` since the daemon started.
pub fn peer_bytes_of(t: i64) -> (u64, u64) {
    let m = sink().peer_bytes.lock().unwrap_or_else(|e| e.into_inner());
    m.get(&t).copied().unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics address {0:?} is not HOST:PORT")]
    BadAddr(String),
    #[error(
        "refusing to serve metrics on {0}: not a loopback address \
         (use --metrics-allow-remote, or metrics_allow_remote = true, to allow it)"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The address `cfg` asks metrics to be served on, checked. `None`: metrics are off.
pub fn address(cfg: &Config) -> Result<Option<SocketAddr>, MetricsError> {
    let Some(text) = cfg.metrics_addr.as_deref().filter(|a| !a.trim().is_empty()) else {
        return Ok(None);
    };
    let addr = text
        .trim()
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| MetricsError::BadAddr(text.into()))?;
    if !addr.ip().is_loopback() && !cfg.metrics_allow_remote {
        return Err(MetricsError::NotLoopback(addr));
    }
    Ok(Some(addr))
}

/// Starts serving metrics if `cfg` asks for it; `status` gives the daemon's report
/// (`None` once the daemon is gone). Binding happens now, so a taken port is an error
/// at start-up. Returns the bound address.
pub fn serve(
    rt: &tokio::runtime::Handle,
    cfg: &Config,
    status: impl Fn() -> Option<StatusReport> + Send + Sync + 'static,
) -> Result<Option<SocketAddr>, MetricsError> {
    let Some(addr) = address(cfg)? else {
        return Ok(None);
    };
    let bind = |source| MetricsError::Bind { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    std_listener.set_nonblocking(true).map_err(bind)?;
    let bound = std_listener.local_addr().map_err(bind)?;
    let listener = {
        let _enter = rt.enter();
        tokio::net::TcpListener::from_std(std_listener).map_err(bind)?
    };
    let status = Arc::new(status);
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let status = status.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, status).await {
                    tracing::debug!(error = %e, "metrics request");
                }
            });
        }
    });
    tracing::info!(%bound, "serving metrics at http://{bound}/metrics");
    Ok(Some(bound))
}

/// Largest request head read; a scrape's is a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8 << 10;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

async fn answer<S>(mut stream: tokio::net::TcpStream, status: Arc<S>) -> std::io::Result<()>
where
    S: Fn() -> Option<StatusReport> + Send + Sync + 'static,
{
    let mut head = Vec::new();
    let read_head = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD_BYTES {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(HEAD_TIMEOUT, read_head).await.is_err() {
        return Ok(());
    }
    let line =
        String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or(&[])).into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, ctype, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    } else if path == "/metrics" || path == "/" {
        let report = tokio::task::spawn_blocking(move || status())
            .await
            .ok()
            .flatten();
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(report.as_ref()),
        )
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    };
    let mut out = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        out += &body;
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// The metrics text for `report` (the daemon's status) plus the sink.
pub fn render(report: Option<&StatusReport>) -> String {
    let mut reg = Registry::with_prefix("bae");
    let s = sink();
    reg.register(
        "remote_request_seconds",
        "Latency of one remote request attempt, by operation",
        s.remote_seconds.clone(),
    );
    reg.register(
        "remote_request_errors",
        "Failed remote request attempts, by operation and kind",
        s.remote_errors.clone(),
    );
    reg.register(
        "fuse_read_seconds",
        "Latency of FUSE reads",
        s.fuse_read_seconds.clone(),
    );
    reg.register(
        "fuse_read_errors",
        "Failed FUSE reads by kind (timeout, integrity, eio, other)",
        s.fuse_read_errors.clone(),
    );
    reg.register(
        "fuse_read_bytes",
        "Bytes returned by FUSE reads",
        s.fuse_read_bytes.clone(),
    );
    reg.register(
        "reads_waited_for_pieces",
        "Reads that had to wait for pieces to be downloaded",
        s.reads_waited.clone(),
    );
    if let Some(r) = report {
        add_status(&mut reg, r);
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

fn add_status(reg: &mut Registry, r: &StatusReport) {
    let label = |t: &super::control::TorrentReport| TorrentLabel {
        torrent: t.name.clone(),
        info_hash: t.info_hash.clone(),
    };
    let down_rate: Family<TorrentLabel, Gauge> = Family::default();
    let up_rate: Family<TorrentLabel, Gauge> = Family::default();
    let peers: Family<TorrentLabel, Gauge> = Family::default();
    let size: Family<TorrentLabel, Gauge> = Family::default();
    let progress: Family<TorrentLabel, Gauge<f64, std::sync::atomic::AtomicU64>> =
        Family::default();
    let chunks: Family<ChunkLabel, Gauge> = Family::default();
    let down_bytes: Family<TorrentLabel, Counter> = Family::default();
    let up_bytes: Family<TorrentLabel, Counter> = Family::default();
    let (mut total_down, mut total_up, mut total_peers) = (0u64, 0u64, 0u64);
    let (mut total_down_bytes, mut total_up_bytes) = (0u64, 0u64);
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for t in &r.torrents {
        let l = label(t);
        down_rate.get_or_create(&l).set(to_i64(t.download_bps));
        up_rate.get_or_create(&l).set(to_i64(t.upload_bps));
        peers.get_or_create(&l).set(i64::from(t.peers));
        size.get_or_create(&l).set(to_i64(t.size_bytes));
        progress.get_or_create(&l).set(t.progress);
        down_bytes.get_or_create(&l).inc_by(t.peer_downloaded_bytes);
        up_bytes.get_or_create(&l).inc_by(t.peer_uploaded_bytes);
        for (state, n) in [
            ("local", t.chunks_local),
            ("complete", t.chunks_complete),
            ("uploaded", t.chunks_uploaded),
            ("total", t.chunks_total),
        ] {
            chunks
                .get_or_create(&ChunkLabel {
                    torrent: t.name.clone(),
                    info_hash: t.info_hash.clone(),
                    state: state.into(),
                })
                .set(i64::from(n));
        }
        total_down += t.download_bps;
        total_up += t.upload_bps;
        total_peers += u64::from(t.peers);
        total_down_bytes += t.peer_downloaded_bytes;
        total_up_bytes += t.peer_uploaded_bytes;
    }
    reg.register(
        "torrent_download_rate_bytes",
        "Download rate from peers, bytes per second",
        down_rate,
    );
    reg.register(
        "torrent_upload_rate_bytes",
        "Upload rate to peers, bytes per second",
        up_rate,
    );
    reg.register("torrent_peers", "Connected peers", peers);
    reg.register("torrent_size_bytes", "Torrent size", size);
    reg.register(
        "torrent_progress_ratio",
        "Verified fraction of the torrent (0..1)",
        progress,
    );
    reg.register(
        "torrent_chunks",
        "Chunks by state: local (cached), complete (every piece verified), uploaded (safe in the remote), total",
        chunks,
    );
    reg.register(
        "torrent_peer_download_bytes",
        "Bytes received from peers since the daemon started",
        down_bytes,
    );
    reg.register("torrent_peer_upload_bytes", "Bytes libtorrent read from the store for peers since the daemon started (its own hash checks not counted)", up_bytes);
    gauge(
        reg,
        "torrents",
        "Torrents in the library",
        r.torrents.len() as u64,
    );
    gauge(
        reg,
        "download_rate_bytes",
        "Total download rate, bytes per second",
        total_down,
    );
    gauge(
        reg,
        "upload_rate_bytes",
        "Total upload rate, bytes per second",
        total_up,
    );
    gauge(reg, "peers", "Connected peers, all torrents", total_peers);
    counter(
        reg,
        "peer_download_bytes",
        "Bytes received from peers since the daemon started",
        total_down_bytes,
    );
    counter(reg, "peer_upload_bytes", "Bytes libtorrent read from the store for peers since the daemon started (its own hash checks not counted)", total_up_bytes);

    let c = &r.cache;
    gauge(
        reg,
        "cache_used_bytes",
        "Bytes in the local chunk cache",
        c.used_bytes,
    );
    gauge(
        reg,
        "cache_limit_bytes",
        "Cache size limit",
        r.cache_limit_bytes,
    );
    gauge(
        reg,
        "cache_evictable_bytes",
        "Cached bytes that may be evicted",
        c.evictable_bytes,
    );
    gauge(
        reg,
        "cache_pinned_bytes",
        "Cached bytes that may not be evicted (seeding pins, not yet uploaded, in use)",
        c.used_bytes.saturating_sub(c.evictable_bytes),
    );
    gauge(
        reg,
        "cache_not_uploaded_bytes",
        "Cached bytes not yet in the remote",
        c.not_uploaded_bytes,
    );
    gauge(
        reg,
        "cache_chunks",
        "Chunks in the local cache",
        c.present_chunks,
    );
    if let Some(u) = &r.uploader {
        gauge(
            reg,
            "uploads_queued",
            "Chunks waiting to be uploaded",
            u.queued as u64,
        );
        gauge(
            reg,
            "uploads_in_flight",
            "Chunks being uploaded",
            u.in_flight as u64,
        );
        gauge(
            reg,
            "uploads_parked",
            "Chunks refused by the remote, waiting before the next attempt",
            u.parked as u64,
        );
        gauge(
            reg,
            "uploads_failing",
            "1 while uploads are failing",
            u64::from(u.last_error.is_some()),
        );
        counter(
            reg,
            "uploaded_chunks",
            "Chunks uploaded since the daemon started",
            u.uploaded_chunks,
        );
        counter(
            reg,
            "uploaded_bytes",
            "Bytes uploaded to the remote since the daemon started",
            u.uploaded_bytes,
        );
    }
    let i = &r.integrity;
    counter(
        reg,
        "integrity_damaged_local_chunks",
        "Local chunk files found missing or altered",
        i.damaged_local_chunks,
    );
    counter(
        reg,
        "integrity_revoked_chunks",
        "Damaged chunks not in the remote, downloaded again",
        i.revoked_chunks,
    );
    counter(
        reg,
        "remote_fetched_chunks",
        "Chunks fetched from the remote",
        i.fetched_chunks,
    );
    counter(
        reg,
        "integrity_remote_errors",
        "Fetched objects that failed authentication or their hash",
        i.remote_integrity_errors,
    );
    counter(
        reg,
        "remote_missing_chunks",
        "Fetches that found the object missing",
        i.remote_missing,
    );
    counter(
        reg,
        "remote_unavailable_fetches",
        "Fetches that failed because the remote was unavailable",
        i.remote_unavailable,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_unless_allowed() {
        let mut c = Config {
            metrics_addr: Some("127.0.0.1:0".into()),
            ..Config::default()
        };
        assert!(address(&c).unwrap().is_some());
        c.metrics_addr = Some("0.0.0.0:9100".into());
        assert!(matches!(address(&c), Err(MetricsError::NotLoopback(_))));
        c.metrics_allow_remote = true;
        assert!(address(&c).unwrap().is_some());
        c.metrics_addr = Some("nonsense".into());
        assert!(matches!(address(&c), Err(MetricsError::BadAddr(_))));
        c.metrics_addr = None;
        assert!(address(&c).unwrap().is_none());
    }

    #[test]
    fn renders_status_and_hooks() {
        remote_request::<()>(
            "get",
            Duration::from_millis(3),
            &Err(RemoteError::Transient("x".into())),
        );
        let mut r = StatusReport {
            cache_limit_bytes: 1 << 30,
            ..Default::default()
        };
        r.torrents.push(super::super::control::TorrentReport {
            name: "A \"quoted\" album".into(),
            info_hash: "ab".into(),
            chunks_total: 5,
            peer_downloaded_bytes: 4096,
            ..Default::default()
        });
        let text = render(Some(&r));
        assert!(text.contains("bae_cache_limit_bytes 1073741824"), "{text}");
        assert!(
            text.contains("bae_remote_request_errors_total{op=\"get\",error=\"transient\"}"),
            "{text}"
        );
        assert!(
            text.contains("bae_remote_request_seconds_count{op=\"get\"}"),
            "{text}"
        );
        assert!(text.contains("state=\"total\"} 5"), "{text}");
        assert!(
            text.contains("bae_peer_download_bytes_total 4096"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
