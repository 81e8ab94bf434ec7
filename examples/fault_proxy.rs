//! A fault-injecting HTTP reverse proxy for tests: sits between bae and the test S3
//! server on 127.0.0.1 and, when told to, delays requests, answers 500/503 in bursts or
//! at random, resets connections, cuts response bodies short, forwards PUT bodies cut
//! short with a matching `Content-Length` (re-signed as `UNSIGNED-PAYLOAD`, so the
//! server stores the short object and answers 200 unless the client sent a checksum
//! header such as `Content-MD5`: what a server that checks nothing would do), holds
//! requests without answering, or goes fully down (the port refuses connections).
//!
//! Usage: `fault_proxy UPSTREAM_URL [PORT] [ACCESS_KEY SECRET_KEY]`. Prints
//! `READY http://127.0.0.1:PORT` once it accepts connections. Faults are switched at run
//! time by commands on stdin, one per line; each is acknowledged on stdout with
//! `OK <command>` (or `ERR <why>`) once it is in force:
//!
//! ```text
//! latency MS                  add MS milliseconds before every request
//! error PCT [STATUS] [METHOD] answer PCT % of requests with STATUS (default 503)
//! burst N [STATUS] [METHOD]   answer the next N requests with STATUS (default 500)
//! reset PCT [METHOD]          reset the connection (RST) instead of answering
//! hang PCT [METHOD]           never answer (until the client gives up)
//! truncate_get PCT            GET responses: send half the body, then drop the connection
//! truncate_put PCT            PUT bodies: forward half, with Content-Length fixed
//! put_rate BYTES_PER_SEC      PUT bodies share one link of that rate (an uplink slower
//!                             than the machine), each waiting its turn; 0 = unlimited
//! down | up                   refuse connections (existing ones are dropped) | accept again
//! clear                       every fault off, and up
//! seed N                      reseed the random choices (runs are reproducible)
//! stats                       print `STATS key=value ...` counters
//! ```
//!
//! Invariants: only 127.0.0.1 is listened on and only the given upstream is dialled;
//! with no fault in force every request and response passes through unchanged.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, std::io::Error>;

const TEST_ACCESS_KEY: &str = "bae-test-access-key";
const TEST_SECRET_KEY: &str = "bae-test-secret-key";

/// A fault that applies to a share of requests, optionally of one method only.
#[derive(Clone, Debug, Default)]
struct Rule {
    percent: u32,
    status: u16,
    method: Option<Method>,
}

impl Rule {
    fn matches(&self, method: &Method, rng: &mut rand::rngs::StdRng) -> bool {
        self.percent > 0
            && self.method.as_ref().is_none_or(|m| m == method)
            && rng.random_range(0..100) < self.percent
    }
}

#[derive(Debug, Default)]
struct Faults {
    latency_ms: u64,
    error: Rule,
    burst_left: u64,
    burst: Rule,
    reset: Rule,
    hang: Rule,
    truncate_get: u32,
    truncate_put: u32,
    put_rate: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    forwarded: AtomicU64,
    errors: AtomicU64,
    resets: AtomicU64,
    hangs: AtomicU64,
    truncated_gets: AtomicU64,
    truncated_puts: AtomicU64,
    upstream_failures: AtomicU64,
    connections: AtomicU64,
}

struct Proxy {
    upstream: String,
    access_key: String,
    secret_key: String,
    faults: Mutex<Faults>,
    /// When the simulated upload link is free again (`put_rate`).
    put_link: Mutex<Instant>,
    rng: Mutex<rand::rngs::StdRng>,
    counters: Counters,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// What to do with one request, decided under the lock, acted on outside it.
enum Decision {
    Status(u16),
    Reset,
    Hang,
    Forward {
        latency_ms: u64,
        truncate_get: bool,
        truncate_put: bool,
        put_rate: u64,
    },
}

impl Proxy {
    fn decide(&self, method: &Method) -> Decision {
        let mut f = self.faults.lock().unwrap();
        let mut rng = self.rng.lock().unwrap();
        if f.burst_left > 0 && f.burst.method.as_ref().is_none_or(|m| m == method) {
            f.burst_left -= 1;
            return Decision::Status(f.burst.status);
        }
        if f.error.matches(method, &mut rng) {
            return Decision::Status(f.error.status);
        }
        if f.reset.matches(method, &mut rng) {
            return Decision::Reset;
        }
        if f.hang.matches(method, &mut rng) {
            return Decision::Hang;
        }
        let roll =
            |rng: &mut rand::rngs::StdRng, pct: u32| pct > 0 && rng.random_range(0..100) < pct;
        Decision::Forward {
            latency_ms: f.latency_ms,
            truncate_get: *method == Method::GET && roll(&mut rng, f.truncate_get),
            truncate_put: *method == Method::PUT && roll(&mut rng, f.truncate_put),
            put_rate: if *method == Method::PUT {
                f.put_rate
            } else {
                0
            },
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        fd: RawFd,
    ) -> Result<Response<ProxyBody>, std::io::Error> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let (latency_ms, truncate_get, truncate_put, put_rate) = match self.decide(req.method()) {
            Decision::Status(code) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                // Drain the request so the connection stays usable for the next one.
                let _ = req.into_body().collect().await;
                return Ok(error_response(code));
            }
            Decision::Reset => {
                self.counters.resets.fetch_add(1, Ordering::Relaxed);
                set_linger_zero(fd);
                return Err(std::io::Error::other("connection reset by the fault proxy"));
            }
            Decision::Hang => {
                self.counters.hangs.fetch_add(1, Ordering::Relaxed);
                // Ends when the client gives up and hyper drops this future.
                std::future::pending::<()>().await;
                unreachable!()
            }
            Decision::Forward {
                latency_ms,
                truncate_get,
                truncate_put,
                put_rate,
            } => (latency_ms, truncate_get, truncate_put, put_rate),
        };
        if latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(latency_ms)).await;
        }
        let (mut parts, body) = req.into_parts();
        let mut body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        if put_rate > 0 {
            self.take_link(body.len() as u64, put_rate).await;
        }
        if truncate_put && body.len() > 1 {
            body = body.slice(..body.len() / 2);
            parts
                .headers
                .insert(hyper::header::CONTENT_LENGTH, body.len().into());
            self.resign_unsigned(&mut parts);
            self.counters.truncated_puts.fetch_add(1, Ordering::Relaxed);
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("{}{path}", self.upstream)
            .parse()
            .map_err(std::io::Error::other)?;
        let upstream = match self
            .client
            .request(Request::from_parts(parts, Full::new(body)))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.counters
                    .upstream_failures
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(error_response_msg(502, &format!("upstream: {e}")));
            }
        };
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = upstream.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        if truncate_get && body.len() > 1 && parts.status.is_success() {
            self.counters.truncated_gets.fetch_add(1, Ordering::Relaxed);
            // Headers promise the whole body; half of it arrives, then the connection dies.
            let half = body.slice(..body.len() / 2);
            let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(half)),
                Err(std::io::Error::other("body cut short by the fault proxy")),
            ];
            let stream = StreamBody::new(futures::stream::iter(frames));
            return Ok(Response::from_parts(parts, BodyExt::boxed(stream)));
        }
        Ok(Response::from_parts(parts, full(body)))
    }

    /// Waits until a body of `len` bytes has crossed the shared link: bodies queue one
    /// behind another, so the sum of all PUTs in flight moves at `rate` bytes per second.
    async fn take_link(&self, len: u64, rate: u64) {
        let done = {
            let mut free_at = self.put_link.lock().unwrap();
            let start = (*free_at).max(Instant::now());
            *free_at = start + Duration::from_secs_f64(len as f64 / rate as f64);
            *free_at
        };
        tokio::time::sleep_until(done.into()).await;
    }

    /// Re-signs a SigV4 request whose body was changed, declaring the payload unsigned,
    /// so that the server accepts the altered body unless another checksum (Content-MD5,
    /// x-amz-checksum-*) says otherwise. Streaming (aws-chunked) requests are left alone:
    /// cutting their framing is its own fault.
    fn resign_unsigned(&self, parts: &mut hyper::http::request::Parts) {
        let h = &parts.headers;
        let sha = h
            .get("x-amz-content-sha256")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if sha.starts_with("STREAMING-") {
            return;
        }
        let Some(auth) = h.get("authorization").and_then(|v| v.to_str().ok()) else {
            return;
        };
        let Some(amz_date) = h.get("x-amz-date").and_then(|v| v.to_str().ok()) else {
            return;
        };
        let field = |name: &str| {
            auth.split([',', ' '])
                .find_map(|p| p.strip_prefix(name))
                .map(str::to_owned)
        };
        let (Some(credential), Some(signed)) = (field("Credential="), field("SignedHeaders="))
        else {
            return;
        };
        let Some((access_key, scope)) = credential.split_once('/') else {
            return;
        };
        if access_key != self.access_key {
            return;
        }
        let amz_date = amz_date.to_owned();
        parts
            .headers
            .insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        let mut canonical_headers = String::new();
        for name in signed.split(';') {
            let value = parts
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(",");
            canonical_headers += &format!("{name}:{value}\n");
        }
        let mut query: Vec<(&str, &str)> = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        query.sort();
        let query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let canonical = format!(
            "{}\n{}\n{query}\n{canonical_headers}\n{signed}\nUNSIGNED-PAYLOAD",
            parts.method,
            parts.uri.path()
        );
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut key = format!("AWS4{}", self.secret_key).into_bytes();
        for part in scope.split('/') {
            key = hmac_sha256(&key, part.as_bytes());
        }
        let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, Signature={signature}"
        );
        parts.headers.insert("authorization", auth.parse().unwrap());
    }

    fn stats(&self) -> String {
        let c = &self.counters;
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "STATS requests={} forwarded={} errors={} resets={} hangs={} truncated_gets={} \
             truncated_puts={} upstream_failures={} connections={}",
            v(&c.requests),
            v(&c.forwarded),
            v(&c.errors),
            v(&c.resets),
            v(&c.hangs),
            v(&c.truncated_gets),
            v(&c.truncated_puts),
            v(&c.upstream_failures),
            v(&c.connections),
        )
    }
}

/// HMAC-SHA256 (RFC 2104) over the sha2 crate: the one primitive SigV4 needs.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut k = if key.len() > BLOCK {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(BLOCK, 0);
    let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner_hash = Sha256::new()
        .chain_update(&inner)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&outer)
        .chain_update(inner_hash)
        .finalize()
        .to_vec()
}

/// SO_LINGER 0: closing the socket then sends RST instead of FIN.
fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket fd this process owns (the connection being served)
    // with a properly sized, initialised linger struct.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn full(b: Bytes) -> ProxyBody {
    Full::new(b)
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn error_response(code: u16) -> Response<ProxyBody> {
    error_response_msg(code, "injected by the fault proxy")
}

fn error_response_msg(code: u16, msg: &str) -> Response<ProxyBody> {
    let (s3code, status) = match code {
        503 => ("SlowDown", StatusCode::SERVICE_UNAVAILABLE),
        500 => ("InternalError", StatusCode::INTERNAL_SERVER_ERROR),
        other => (
            "InternalError",
            StatusCode::from_u16(other).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        ),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3code}</Code>\
         <Message>{msg}</Message></Error>"
    );
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/xml".parse().unwrap());
    r
}

fn parse_rule(args: &[&str], default_status: u16) -> Result<Rule, String> {
    let percent: u32 = args
        .first()
        .ok_or("missing percentage")?
        .parse()
        .map_err(|e| format!("bad number: {e}"))?;
    let mut rule = Rule {
        percent: percent.min(100),
        status: default_status,
        method: None,
    };
    for a in &args[1..] {
        if let Ok(code) = a.parse::<u16>() {
            rule.status = code;
        } else {
            rule.method = Some(
                a.to_ascii_uppercase()
                    .parse()
                    .map_err(|_| format!("bad method {a}"))?,
            );
        }
    }
    Ok(rule)
}

/// Applies one stdin command; returns the line to print.
fn command(proxy: &Proxy, up: &watch::Sender<bool>, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&cmd, args)) = words.split_first() else {
        return Err("empty command".into());
    };
    let num = |i: usize| -> Result<u64, String> {
        args.get(i)
            .ok_or("missing number")?
            .parse()
            .map_err(|e| format!("bad number: {e}"))
    };
    let mut f = proxy.faults.lock().unwrap();
    match cmd {
        "latency" => f.latency_ms = num(0)?,
        "error" => f.error = parse_rule(args, 503)?,
        "burst" => {
            f.burst = parse_rule(args, 500)?;
            f.burst.percent = 100;
            f.burst_left = num(0)?;
        }
        "reset" => f.reset = parse_rule(args, 0)?,
        "hang" => f.hang = parse_rule(args, 0)?,
        "truncate_get" => f.truncate_get = num(0)?.min(100) as u32,
        "truncate_put" => f.truncate_put = num(0)?.min(100) as u32,
        "put_rate" => f.put_rate = num(0)?,
        "down" => {
            up.send_replace(false);
        }
        "up" => {
            up.send_replace(true);
        }
        "clear" => {
            *f = Faults::default();
            up.send_replace(true);
        }
        "seed" => *proxy.rng.lock().unwrap() = rand::rngs::StdRng::seed_from_u64(num(0)?),
        "stats" => {
            drop(f);
            return Ok(proxy.stats());
        }
        other => return Err(format!("unknown command {other:?}")),
    }
    Ok(format!("OK {line}"))
}

async fn serve(proxy: Arc<Proxy>, addr: SocketAddr, mut up: watch::Receiver<bool>) {
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        // Down: no listener at all, so connecting is refused; wait to come up again.
        while !*up.borrow_and_update() {
            if up.changed().await.is_err() {
                return;
            }
        }
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fault_proxy: cannot listen on {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((socket, _)) = accepted else { continue };
                    proxy.counters.connections.fetch_add(1, Ordering::Relaxed);
                    let fd = socket.as_raw_fd();
                    let p = proxy.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        let p = p.clone();
                        async move { p.handle(req, fd).await }
                    });
                    let conn = http.serve_connection(TokioIo::new(socket), svc).into_owned();
                    conns.spawn(async move {
                        let _ = conn.await;
                    });
                }
                changed = up.changed() => {
                    if changed.is_err() || !*up.borrow() {
                        break;
                    }
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        // Going down: drop every open connection and the listener.
        conns.abort_all();
        drop(listener);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fault_proxy UPSTREAM_URL [PORT] [ACCESS_KEY SECRET_KEY]";
    let upstream = args.first().ok_or(usage)?.trim_end_matches('/').to_owned();
    let port: u16 = match args.get(1) {
        Some(p) => p.parse()?,
        None => 0,
    };
    let upstream_host = upstream
        .strip_prefix("http://")
        .and_then(|r| r.split([':', '/']).next())
        .unwrap_or("");
    if !matches!(upstream_host, "127.0.0.1" | "localhost") {
        return Err(format!("upstream must be http://127.0.0.1:PORT, not {upstream}").into());
    }
    let proxy = Arc::new(Proxy {
        upstream,
        access_key: args
            .get(2)
            .map_or(TEST_ACCESS_KEY, String::as_str)
            .to_owned(),
        secret_key: args
            .get(3)
            .map_or(TEST_SECRET_KEY, String::as_str)
            .to_owned(),
        faults: Mutex::new(Faults::default()),
        put_link: Mutex::new(Instant::now()),
        rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(7)),
        counters: Counters::default(),
        client: Client::builder(TokioExecutor::new()).build_http(),
    });
    // Bind once to learn the port, then hand the address to the serving loop.
    let addr = {
        let l = std::net::TcpListener::bind(("127.0.0.1", port))?;
        l.local_addr()?
    };
    let (up_tx, up_rx) = watch::channel(true);
    tokio::spawn(serve(proxy.clone(), addr, up_rx));
    // Wait until the serving loop listens before saying READY.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY http://{addr}")?;
        out.flush()?;
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let reply = match command(&proxy, &up_tx, line) {
            Ok(r) => r,
            Err(e) => format!("ERR {e}"),
        };
        if line == "down" || line == "up" || line == "clear" {
            // Let the serving loop act on the change before acknowledging it.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    // Stdin closed: the test that started us is gone.
    Ok(())
}
