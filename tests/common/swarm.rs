//! Third-party BitTorrent peers for tests: python3-libtorrent scripts in `tests/peers/`
//! (stock libtorrent storage), run on 127.0.0.1 and killed by PID when dropped; plus a
//! simple file-backed [`TorrentStorage`] for torrent tests that do not need the chunk store.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bae::model::{PieceIndex, TorrentId};
use bae::torrent::{Event, StorageError, TorrentLayout, TorrentStorage};

/// Debian's python3 has python3-libtorrent; another python3 on the PATH may not.
pub const PYTHON: &str = "/usr/bin/python3";
/// Deadline for any one wait on a peer (generous: CI machines are slow).
pub const PEER_DEADLINE: Duration = Duration::from_secs(120);

/// This checkout. Cargo sets `CARGO_MANIFEST_DIR` when it runs a test; the compile-time
/// value is only a fallback (a target directory shared between checkouts keeps test
/// binaries built in another one).
pub fn repo_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn script(name: &str) -> PathBuf {
    repo_dir().join("tests/peers").join(name)
}

/// Writes `files` (relative path, length) under `dir/name` with deterministic
/// pseudo-random content, and returns the album's root.
pub fn make_album(dir: &Path, name: &str, files: &[(&str, usize)], seed: u64) -> PathBuf {
    let root = dir.join(name);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for (rel, len) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut data = Vec::with_capacity(*len);
        while data.len() < *len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.extend_from_slice(&state.to_le_bytes());
        }
        data.truncate(*len);
        std::fs::write(&path, &data).unwrap();
    }
    root
}

/// Makes a torrent of `album` with python3-libtorrent. `mode`: hybrid, v2, v1pad, v1.
/// Returns (torrent bytes, magnet link).
pub fn python_torrent(album: &Path, out: &Path, piece_len: u64, mode: &str) -> (Vec<u8>, String) {
    python_torrent_with_tracker(album, out, piece_len, mode, None)
}

/// [`python_torrent`], announcing to `tracker` if given.
pub fn python_torrent_with_tracker(
    album: &Path,
    out: &Path,
    piece_len: u64,
    mode: &str,
    tracker: Option<&str>,
) -> (Vec<u8>, String) {
    let output = Command::new(PYTHON)
        .arg(script("make_torrent.py"))
        .arg(album)
        .arg(out)
        .arg(piece_len.to_string())
        .arg(mode)
        .args(tracker)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "make_torrent.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let magnet = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    (std::fs::read(out).unwrap(), magnet)
}

/// A running python peer; killed (by PID) and reaped on drop.
pub struct PyPeer {
    child: Child,
    lines: Receiver<String>,
    pub port: u16,
    /// The latest "UP <bytes>" a seeder printed: payload bytes it uploaded.
    uploaded_bytes: u64,
}

impl PyPeer {
    fn spawn(script_name: &str, args: &[&std::ffi::OsStr]) -> PyPeer {
        let mut child = Command::new(PYTHON)
            .arg(script(script_name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        PyPeer {
            child,
            lines,
            port: 0,
            uploaded_bytes: 0,
        }
    }

    /// Starts a seeder of `torrent` whose data is under `save_dir`; returns once seeding.
    pub fn seed(torrent: &Path, save_dir: &Path) -> PyPeer {
        let mut peer = PyPeer::spawn(
            "peer.py",
            &["seed".as_ref(), torrent.as_os_str(), save_dir.as_os_str()],
        );
        let line = peer.wait_line("PORT");
        peer.port = line["PORT ".len()..].parse().unwrap();
        peer
    }

    /// Like [`PyPeer::seed`], uploading at most `bytes_per_sec`.
    pub fn seed_limited(torrent: &Path, save_dir: &Path, bytes_per_sec: u64) -> PyPeer {
        let limit = bytes_per_sec.to_string();
        let mut peer = PyPeer::spawn(
            "peer.py",
            &[
                "seed".as_ref(),
                torrent.as_os_str(),
                save_dir.as_os_str(),
                limit.as_ref(),
            ],
        );
        let line = peer.wait_line("PORT");
        peer.port = line["PORT ".len()..].parse().unwrap();
        peer
    }

    /// Like [`PyPeer::seed`], listening on `port` (a peer list naming the old seeder
    /// reaches this one).
    pub fn seed_at(torrent: &Path, save_dir: &Path, port: u16) -> PyPeer {
        let port = port.to_string();
        let mut peer = PyPeer::spawn(
            "peer.py",
            &[
                "seed".as_ref(),
                torrent.as_os_str(),
                save_dir.as_os_str(),
                "0".as_ref(),
                port.as_ref(),
            ],
        );
        let line = peer.wait_line("PORT");
        peer.port = line["PORT ".len()..].parse().unwrap();
        peer
    }

    /// Seeds the pieces of `torrent` that `save_dir` holds (once checked), the rest
    /// missing.
    pub fn seed_partial(torrent: &Path, save_dir: &Path) -> PyPeer {
        let mut peer = PyPeer::spawn(
            "peer.py",
            &[
                "partial".as_ref(),
                torrent.as_os_str(),
                save_dir.as_os_str(),
            ],
        );
        let line = peer.wait_line("PORT");
        peer.port = line["PORT ".len()..].parse().unwrap();
        peer
    }

    /// Starts a leecher of `torrent` into `save_dir`, dialling `from`.
    pub fn leech(torrent: &Path, save_dir: &Path, from: SocketAddr) -> PyPeer {
        let from = from.to_string();
        PyPeer::spawn(
            "peer.py",
            &[
                "leech".as_ref(),
                torrent.as_os_str(),
                save_dir.as_os_str(),
                from.as_ref(),
            ],
        )
    }

    /// Starts a peer that claims every piece of `torrent` (v1) and sends garbage.
    pub fn corrupt_seeder(torrent: &Path) -> PyPeer {
        let mut peer = PyPeer::spawn("corrupt_seeder.py", &[torrent.as_os_str()]);
        let line = peer.wait_line("PORT");
        peer.port = line["PORT ".len()..].parse().unwrap();
        peer
    }

    /// Starts the test tracker (`tests/peers/tracker.py`); see [`PyPeer::announce_url`].
    pub fn tracker() -> PyPeer {
        let mut peer = PyPeer::spawn("tracker.py", &[]);
        let line = peer.wait_line("PORT");
        peer.port = line["PORT ".len()..].parse().unwrap();
        peer
    }

    /// The announce URL of a tracker started with [`PyPeer::tracker`]. The path is
    /// /announce: libtorrent only announces to localhost trackers on that path.
    pub fn announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits (up to [`PEER_DEADLINE`]) for a stdout line starting with `prefix`.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + PEER_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.note(&line);
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("python peer: no {prefix:?} line in time"),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    panic!("python peer exited ({status}) before printing {prefix:?}")
                }
            }
        }
    }
}

impl PyPeer {
    fn note(&mut self, line: &str) {
        if let Some(n) = line.strip_prefix("UP ").and_then(|n| n.parse().ok()) {
            self.uploaded_bytes = n;
        }
    }

    /// Payload bytes a seeder has uploaded, as of its latest report.
    pub fn uploaded_bytes(&mut self) -> u64 {
        while let Ok(line) = self.lines.try_recv() {
            self.note(&line);
        }
        self.uploaded_bytes
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the first event matching `pred`, failing on a torrent error or the deadline.
pub fn wait_event(
    events: &Receiver<Event>,
    what: &str,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    let deadline = Instant::now() + PEER_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Error { t, message }) => {
                panic!("torrent error ({t:?}) while waiting for {what}: {message}")
            }
            Ok(event) if pred(&event) => return event,
            Ok(_) => continue,
            Err(e) => panic!("no {what} event in time: {e}"),
        }
    }
}

struct Stored {
    file: File,
    layout: TorrentLayout,
    verified: Vec<bool>,
}

/// A [`TorrentStorage`] keeping each torrent's content stream in one sparse file, for
/// tests of the torrent layer alone. Counts calls so tests can see the data went
/// through it.
#[derive(Default)]
pub struct FileStorage {
    dir: PathBuf,
    torrents: Mutex<HashMap<TorrentId, Stored>>,
    /// Streams written before the torrent is added, and whether their pieces count as
    /// verified (seeding) or not (import, to be checked by libtorrent).
    prefilled: Mutex<HashMap<TorrentId, (Vec<u8>, bool)>>,
    pub stats: Mutex<Stats>,
    /// The next this-many reads fail as if the remote were down.
    pub fail_reads: std::sync::atomic::AtomicU32,
    /// Each write first sleeps this long: a slow disk, to fill libtorrent's write queue.
    pub write_delay_us: std::sync::atomic::AtomicU64,
    /// Reads of this torrent wait until it is cleared: a remote that does not answer.
    pub stall_reads_of: Mutex<Option<TorrentId>>,
    stall_cleared: std::sync::Condvar,
    /// Reads that have waited on `stall_reads_of`.
    pub stalled_reads: std::sync::atomic::AtomicU32,
    /// Every `read_now` is answered (as if all bytes were at hand); counted in
    /// `now_reads`, not in `stats.bytes_read`.
    pub answer_now: std::sync::atomic::AtomicBool,
    pub now_reads: std::sync::atomic::AtomicU64,
}

#[derive(Default, Debug, Clone)]
pub struct Stats {
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub verified_calls: u64,
    pub failed_pieces: Vec<PieceIndex>,
    pub closed: u64,
}

impl FileStorage {
    pub fn new(dir: &Path) -> Arc<FileStorage> {
        std::fs::create_dir_all(dir).unwrap();
        Arc::new(FileStorage {
            dir: dir.to_owned(),
            ..Default::default()
        })
    }

    /// Makes `t`'s stream be `stream` when it is opened, every piece verified or none.
    pub fn prefill(&self, t: TorrentId, stream: Vec<u8>, verified: bool) {
        self.prefilled.lock().unwrap().insert(t, (stream, verified));
    }

    /// The whole content stream of `t` (pads included).
    pub fn stream(&self, t: TorrentId) -> Vec<u8> {
        let torrents = self.torrents.lock().unwrap();
        let stored = &torrents[&t];
        let mut buf = vec![0u8; stored.layout.total_len as usize];
        stored.file.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    pub fn verified(&self, t: TorrentId) -> Vec<bool> {
        self.torrents.lock().unwrap()[&t].verified.clone()
    }

    pub fn layout(&self, t: TorrentId) -> TorrentLayout {
        self.torrents.lock().unwrap()[&t].layout.clone()
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }

    /// Makes reads of `t` hang until [`FileStorage::unstall_reads`].
    pub fn stall_reads(&self, t: TorrentId) {
        *self.stall_reads_of.lock().unwrap() = Some(t);
    }

    pub fn unstall_reads(&self) {
        *self.stall_reads_of.lock().unwrap() = None;
        self.stall_cleared.notify_all();
    }
}

fn io(e: std::io::Error) -> StorageError {
    StorageError::Io(e.to_string())
}

impl TorrentStorage for FileStorage {
    fn open(&self, t: TorrentId, layout: &TorrentLayout) -> Result<Vec<bool>, StorageError> {
        let path = self.dir.join(format!("{}.stream", t.0));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        file.set_len(layout.total_len).map_err(io)?;
        let pieces = layout.num_pieces() as usize;
        let verified = match self.prefilled.lock().unwrap().remove(&t) {
            Some((stream, verified)) => {
                file.write_all_at(&stream, 0).map_err(io)?;
                vec![verified; pieces]
            }
            None => vec![false; pieces],
        };
        let mut torrents = self.torrents.lock().unwrap();
        // Reopening keeps what was verified before.
        let verified = match torrents.get(&t) {
            Some(old) => old.verified.clone(),
            None => verified,
        };
        torrents.insert(
            t,
            Stored {
                file,
                layout: layout.clone(),
                verified: verified.clone(),
            },
        );
        Ok(verified)
    }

    fn write(&self, t: TorrentId, stream_offset: u64, data: &[u8]) -> Result<(), StorageError> {
        let delay_us = self
            .write_delay_us
            .load(std::sync::atomic::Ordering::Relaxed);
        if delay_us > 0 {
            std::thread::sleep(Duration::from_micros(delay_us));
        }
        let file = {
            let torrents = self.torrents.lock().unwrap();
            torrents
                .get(&t)
                .ok_or(StorageError::NotFound)?
                .file
                .try_clone()
                .map_err(io)?
        };
        file.write_all_at(data, stream_offset).map_err(io)?;
        self.stats.lock().unwrap().bytes_written += data.len() as u64;
        Ok(())
    }

    fn read(&self, t: TorrentId, stream_offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        {
            let mut stall = self.stall_reads_of.lock().unwrap();
            if *stall == Some(t) {
                self.stalled_reads
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                while *stall == Some(t) {
                    stall = self.stall_cleared.wait(stall).unwrap();
                }
            }
        }
        let (file, layout) = {
            let torrents = self.torrents.lock().unwrap();
            let stored = torrents.get(&t).ok_or(StorageError::NotFound)?;
            (stored.file.try_clone().map_err(io)?, stored.layout.clone())
        };
        let failing = self.fail_reads.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
        if failing.is_ok() {
            return Err(StorageError::Fetch("remote unavailable (test)".into()));
        }
        file.read_exact_at(buf, stream_offset).map_err(io)?;
        // Pad bytes read as zeros whatever was written there.
        let end = stream_offset + buf.len() as u64;
        let mut at = 0u64;
        for f in &layout.files {
            let (from, to) = (at.max(stream_offset), (at + f.len).min(end));
            if f.pad && from < to {
                buf[(from - stream_offset) as usize..(to - stream_offset) as usize].fill(0);
            }
            at += f.len;
        }
        self.stats.lock().unwrap().bytes_read += buf.len() as u64;
        Ok(())
    }

    fn read_now(
        &self,
        t: TorrentId,
        stream_offset: u64,
        buf: &mut [u8],
    ) -> Option<Result<(), StorageError>> {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.answer_now.load(SeqCst) {
            return None;
        }
        let r = self.read(t, stream_offset, buf);
        if r.is_ok() {
            let mut stats = self.stats.lock().unwrap();
            stats.bytes_read -= buf.len() as u64;
            self.now_reads.fetch_add(1, SeqCst);
        }
        Some(r)
    }

    fn pieces_verified(&self, t: TorrentId, pieces: &[PieceIndex]) {
        if let Some(stored) = self.torrents.lock().unwrap().get_mut(&t) {
            for p in pieces {
                stored.verified[p.0 as usize] = true;
            }
        }
        self.stats.lock().unwrap().verified_calls += 1;
    }

    fn piece_failed(&self, t: TorrentId, piece: PieceIndex) {
        if let Some(stored) = self.torrents.lock().unwrap().get_mut(&t) {
            stored.verified[piece.0 as usize] = false;
        }
        self.stats.lock().unwrap().failed_pieces.push(piece);
    }

    fn close(&self, _t: TorrentId) {
        self.stats.lock().unwrap().closed += 1;
    }
}

/// The content stream of `album` for `layout`: its files in torrent order with pad
/// files as zeros.
pub fn expected_stream(album: &Path, layout: &TorrentLayout) -> Vec<u8> {
    let mut stream = Vec::with_capacity(layout.total_len as usize);
    for f in &layout.files {
        if f.pad {
            stream.resize(stream.len() + f.len as usize, 0);
        } else {
            let path = f.path.iter().fold(album.to_path_buf(), |p, c| p.join(c));
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(data.len() as u64, f.len, "{}", path.display());
            stream.extend_from_slice(&data);
        }
    }
    stream
}

/// An aria2c process (aria2's own BitTorrent code: v1 torrents), killed on drop. It
/// finds peers through the torrent's tracker; DHT, LPD and PEX are off.
pub struct Aria2 {
    child: Child,
}

impl Aria2 {
    fn spawn(torrent: &Path, dir: &Path, extra: &[&str]) -> Aria2 {
        let child = Command::new("aria2c")
            .arg(format!("--dir={}", dir.display()))
            .args([
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--file-allocation=none",
                "--summary-interval=0",
                "--console-log-level=warn",
                "--disable-ipv6=true",
            ])
            .args(extra)
            .arg(torrent)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Aria2 { child }
    }

    /// Downloads `torrent` into `dir` and exits once complete (no seeding).
    pub fn leech(torrent: &Path, dir: &Path) -> Aria2 {
        Aria2::spawn(torrent, dir, &["--seed-time=0"])
    }

    /// Checks the data under `dir` and seeds it until killed.
    pub fn seed(torrent: &Path, dir: &Path) -> Aria2 {
        Aria2::spawn(
            torrent,
            dir,
            &["--check-integrity=true", "--seed-ratio=0.0"],
        )
    }

    /// Waits (up to [`PEER_DEADLINE`]) for aria2c to exit successfully.
    pub fn wait_success(&mut self) {
        let deadline = Instant::now() + PEER_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "aria2c failed: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "aria2c did not finish in time");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Aria2 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
