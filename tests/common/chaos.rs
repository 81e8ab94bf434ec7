//! Shared parts of the chaos scenarios (tests/chaos.rs): the short/full switch, a
//! verdict that collects every broken guarantee of a run before failing (so one run
//! shows them all), readers that compare bytes read through the mount with the
//! originals while faults happen, commands bounded in time (a hang is a finding, not a
//! stuck test), the catalog seen read-only, and a small loop-mounted ext4 image that is
//! always unmounted and detached on Drop.
//!
//! Places where the helpers know bae's on-disk layout are marked "LAYOUT": chunk files
//! at `cache/<torrent uid hex>/<index>`, chunk objects named by `chunks.object_id`.
//! If that layout changes, only these helpers change.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use super::bae::Bae;

/// `BAE_CHAOS=full` runs the long campaign (scripts/chaos); anything else the short one.
pub fn full_mode() -> bool {
    std::env::var("BAE_CHAOS").is_ok_and(|v| v == "full")
}

/// A seed for this run: `BAE_CHAOS_SEED` to replay one, else the clock.
pub fn seed() -> u64 {
    let seed = std::env::var("BAE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    // Shown with a failing test's output, so that the run can be replayed.
    println!("BAE_CHAOS_SEED={seed}");
    seed
}

/// The guarantees one scenario checked: every failure is kept, and `finish` prints one
/// summary line (`CHAOS <scenario>: ...`, which scripts/chaos collects) and fails the
/// test if any guarantee broke.
pub struct Verdict {
    scenario: String,
    checks: usize,
    failures: Vec<String>,
    known: Vec<String>,
}

impl Verdict {
    pub fn new(scenario: &str) -> Verdict {
        Verdict {
            scenario: scenario.to_owned(),
            checks: 0,
            failures: Vec::new(),
            known: Vec::new(),
        }
    }

    /// Records guarantee `what`; `detail` says what was seen when it does not hold.
    pub fn check(&mut self, what: &str, ok: bool, detail: impl FnOnce() -> String) -> bool {
        self.checks += 1;
        if !ok {
            let d = detail();
            eprintln!("CHAOS {} FAILED: {what}: {d}", self.scenario);
            self.failures.push(format!("{what}: {d}"));
        }
        ok
    }

    /// A guarantee an open issue promises but the code does not keep yet: reported in
    /// the summary (`KNOWN`), not a failure. Wrong bytes, lost chunks, panics and hangs
    /// are never checked this way.
    pub fn known(&mut self, what: &str, issue: u32, ok: bool, detail: impl FnOnce() -> String) {
        if !ok {
            let d = detail();
            eprintln!("CHAOS {} KNOWN (issue {issue}): {what}: {d}", self.scenario);
            self.known.push(format!("{what} (issue {issue})"));
        }
    }

    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    /// Prints the summary and panics with every broken guarantee, if any.
    pub fn finish(self, summary: &str) {
        let mut result = if self.failures.is_empty() {
            "ok".to_owned()
        } else {
            format!("FAILED {} of {} checks", self.failures.len(), self.checks)
        };
        if !self.known.is_empty() {
            result += &format!(" (known open: {})", self.known.join("; "));
        }
        // stdout and stderr both: cargo shows stderr of failed tests, --nocapture both.
        println!("CHAOS {}: {result}: {summary}", self.scenario);
        eprintln!("CHAOS {}: {result}: {summary}", self.scenario);
        assert!(
            self.failures.is_empty(),
            "{}: guarantees broken:\n  - {}",
            self.scenario,
            self.failures.join("\n  - ")
        );
    }
}

/// What readers saw. `wrong` counts reads that returned bytes different from the
/// original (short reads inside the file included): it must stay 0.
#[derive(Clone, Debug, Default)]
pub struct ReadStats {
    pub reads: u64,
    pub right: u64,
    pub wrong: u64,
    pub zeros: u64,
    pub eio: u64,
    /// Other errors: the mount gone (ENOTCONN), between mounts (ENOENT), …
    pub unavailable: u64,
    pub longest_eio: Duration,
    /// Which read that was, and when (seconds since the Unix epoch, to find it in logs).
    pub longest_eio_what: String,
    pub longest_read: Duration,
    pub wrong_details: Vec<String>,
    /// `unavailable` by errno.
    pub other_errors: std::collections::BTreeMap<i32, u64>,
}

impl ReadStats {
    pub fn merge(&mut self, o: &ReadStats) {
        self.reads += o.reads;
        self.right += o.right;
        self.wrong += o.wrong;
        self.zeros += o.zeros;
        self.eio += o.eio;
        self.unavailable += o.unavailable;
        if o.longest_eio > self.longest_eio {
            self.longest_eio = o.longest_eio;
            self.longest_eio_what = o.longest_eio_what.clone();
        }
        self.longest_read = self.longest_read.max(o.longest_read);
        self.wrong_details
            .extend(o.wrong_details.iter().take(8).cloned());
        for (k, n) in &o.other_errors {
            *self.other_errors.entry(*k).or_default() += n;
        }
    }

    pub fn line(&self) -> String {
        let errnos: Vec<String> = self
            .other_errors
            .iter()
            .map(|(e, n)| format!("{n}x {}", std::io::Error::from_raw_os_error(*e)))
            .collect();
        format!(
            "{} reads: {} right, {} WRONG ({} zeros), {} EIO (longest {:.1}s), {} unavailable{}",
            self.reads,
            self.right,
            self.wrong,
            self.zeros,
            self.eio,
            self.longest_eio.as_secs_f64(),
            self.unavailable,
            if errnos.is_empty() {
                String::new()
            } else {
                format!(" ({})", errnos.join(", "))
            }
        )
    }
}

/// One file to read: its path in the mount and its original bytes.
#[derive(Clone)]
pub struct Target {
    pub mounted: PathBuf,
    pub original: Arc<Vec<u8>>,
}

/// Every file under `original_root`, paired with the same path under `mounted_root`.
pub fn targets(original_root: &Path, mounted_root: &Path) -> Vec<Target> {
    walk(original_root)
        .into_iter()
        .map(|rel| Target {
            mounted: mounted_root.join(&rel),
            original: Arc::new(std::fs::read(original_root.join(&rel)).unwrap()),
        })
        .collect()
}

/// Relative paths of the files under `root`, sorted.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap().flatten() {
            let p = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Reads `len` bytes at `offset` of `path` bypassing the page cache as far as FUSE
/// allows (cached pages dropped, no kernel read-ahead), so every read reaches bae.
pub fn read_range(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    // SAFETY: posix_fadvise on a file descriptor we own; advice only.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
    }
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// One read checked against the original; updates `st`.
pub fn checked_read(st: &mut ReadStats, t: &Target, offset: u64, len: usize) {
    let started = Instant::now();
    let r = read_range(&t.mounted, offset, len);
    let took = started.elapsed();
    st.reads += 1;
    st.longest_read = st.longest_read.max(took);
    let want = &t.original[offset as usize..offset as usize + len];
    match r {
        Ok(got) if got == want => st.right += 1,
        Ok(got) => {
            st.wrong += 1;
            let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            let zeros = got[first..].iter().take(4096).all(|&b| b == 0);
            if zeros {
                st.zeros += 1;
            }
            if st.wrong_details.len() < 8 {
                st.wrong_details.push(format!(
                    "{} @{offset}+{len}: first difference at +{first}{}",
                    t.mounted.display(),
                    if zeros { " (zeros)" } else { "" }
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            st.wrong += 1;
            if st.wrong_details.len() < 8 {
                st.wrong_details.push(format!(
                    "{} @{offset}+{len}: short read inside the file",
                    t.mounted.display()
                ));
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::EIO) => {
            st.eio += 1;
            if took > st.longest_eio {
                st.longest_eio = took;
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                st.longest_eio_what = format!(
                    "{} @{offset}+{len}, ended at {:.1}",
                    t.mounted.display(),
                    at.as_secs_f64()
                );
            }
        }
        Err(e) => {
            st.unavailable += 1;
            *st.other_errors
                .entry(e.raw_os_error().unwrap_or(0))
                .or_default() += 1;
        }
    }
}

/// Background readers: random ranges of random files, each compared with the original.
pub struct Readers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<ReadStats>>,
    /// Paused readers issue no reads (e.g. while the test itself measures something).
    pub paused: Arc<AtomicBool>,
}

impl Readers {
    pub fn start(targets: Vec<Target>, threads: usize, seed: u64) -> Readers {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(targets);
        let threads = (0..threads)
            .map(|i| {
                let (stop, paused, targets) = (stop.clone(), paused.clone(), targets.clone());
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64 + 1));
                    let mut st = ReadStats::default();
                    while !stop.load(Ordering::Relaxed) {
                        if paused.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        let t = &targets[rng.random_range(0..targets.len())];
                        let size = t.original.len();
                        if size == 0 {
                            continue;
                        }
                        let len = rng.random_range(1..=size.min(256 << 10));
                        let offset = rng.random_range(0..=size - len) as u64;
                        let before = st.unavailable;
                        checked_read(&mut st, t, offset, len);
                        // No mount (between a kill and the restart): do not spin.
                        let pause = if st.unavailable > before { 200 } else { 15 };
                        std::thread::sleep(Duration::from_millis(pause));
                    }
                    st
                })
            })
            .collect();
        Readers {
            stop,
            threads,
            paused,
        }
    }

    pub fn stop(self) -> ReadStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = ReadStats::default();
        for t in self.threads {
            all.merge(&t.join().expect("reader thread panicked"));
        }
        all
    }
}

/// Reads every target whole through the mount; returns what was not right.
pub fn compare_all(targets: &[Target]) -> Vec<String> {
    let mut bad = Vec::new();
    for t in targets {
        let mut got = Vec::new();
        let r = std::fs::File::open(&t.mounted).and_then(|mut f| f.read_to_end(&mut got));
        match r {
            Err(e) => bad.push(format!("{}: {e}", t.mounted.display())),
            Ok(_) if got[..] != t.original[..] => bad.push(format!(
                "{}: WRONG BYTES ({} bytes read, {} expected)",
                t.mounted.display(),
                got.len(),
                t.original.len()
            )),
            Ok(_) => {}
        }
    }
    bad
}

/// Runs `cmd` with a deadline; Err says it hung (and was killed) or could not start.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("wait failed: {e}")),
        Err(_) => {
            // SAFETY: kill(2) on the child we just started and have not reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(format!("hung: no exit within {timeout:?} (killed)"))
        }
    }
}

/// `bae mount` after a crash. If a stale mount blocks it, `bae umount` and mount again
/// (issue 12 makes `bae mount` alone enough). Ok(true): a stale mount had to be removed.
pub fn remount(bae: &Bae) -> Result<bool, String> {
    let mp = bae.mountpoint.to_str().unwrap().to_owned();
    let first = run_bounded(bae.cmd(&["mount", &mp]), Duration::from_secs(150))?;
    if first.status.success() {
        return Ok(false);
    }
    let err = String::from_utf8_lossy(&first.stderr).into_owned();
    // Lazy: readers may hold files open across the crash.
    let um = run_bounded(bae.cmd(&["umount", "--lazy", &mp]), Duration::from_secs(60))?;
    let again = run_bounded(bae.cmd(&["mount", &mp]), Duration::from_secs(150))?;
    if again.status.success() {
        return Ok(true);
    }
    Err(format!(
        "bae mount failed: {}\nbae umount: {}\nbae mount again: {}\nlog tail: {}",
        err.trim(),
        String::from_utf8_lossy(&um.stderr).trim(),
        String::from_utf8_lossy(&again.stderr).trim(),
        tail(&bae.log(), 15)
    ))
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of a daemon log that tell of a failed filesystem read.
pub fn failed_reads(log: &str, n: usize) -> String {
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("read failed") || l.contains("read timed out") || l.contains("just failed")
        })
        .collect();
    failed[failed.len().saturating_sub(n)..].join("\n")
}

/// `sqlite3 DB 'PRAGMA integrity_check'` (the real CLI, as a user would check).
pub fn integrity_check(db: &Path) -> String {
    match Command::new("sqlite3")
        .arg(db)
        .arg("PRAGMA integrity_check")
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => format!(
            "sqlite3 failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("cannot run sqlite3: {e}"),
    }
}

/// Lines of the daemon log that report a panic.
pub fn panics(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("panicked"))
        .map(str::to_owned)
        .collect()
}

/// One torrent's row of `status --json`, by name.
pub fn torrent_status(bae: &Bae, name: &str) -> Option<serde_json::Value> {
    let out = run_bounded(bae.cmd(&["status", "--json"]), Duration::from_secs(30)).ok()?;
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    s["torrents"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
        .cloned()
}

/// Polls `pred` on the torrent's status until it holds or `timeout` passes; returns the
/// last status seen and whether it held.
pub fn wait_status(
    bae: &Bae,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> (bool, serde_json::Value) {
    let deadline = Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    loop {
        if let Some(t) = torrent_status(bae, name) {
            if pred(&t) {
                return (true, t);
            }
            last = t;
        }
        if Instant::now() > deadline {
            return (false, last);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn complete_and_uploaded(t: &serde_json::Value) -> bool {
    t["progress"].as_f64().unwrap_or(0.0) >= 1.0
        && t["chunks_total"].as_u64().unwrap_or(0) > 0
        && t["chunks_uploaded"] == t["chunks_total"]
}

/// Rows of a read-only query on the library's catalog (safe while the daemon runs).
pub fn query(db: &Path, sql: &str) -> Vec<Vec<rusqlite::types::Value>> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        (0..n)
            .map(|i| r.get::<_, rusqlite::types::Value>(i))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// A chunk as the catalog records it.
#[derive(Clone, Debug)]
pub struct ChunkRow {
    pub torrent_uid: Vec<u8>,
    pub torrent_name: String,
    pub index: u32,
    pub state: i64,
    pub object_id: Option<String>,
}

pub const COMPLETE: i64 = 1;
pub const UPLOADED: i64 = 2;

pub fn chunks(db: &Path) -> Vec<ChunkRow> {
    use rusqlite::types::Value;
    query(
        db,
        "SELECT t.uid, t.name, c.idx, c.state, c.object_id FROM chunks c \
         JOIN torrents t ON t.id = c.torrent_id ORDER BY t.id, c.idx",
    )
    .into_iter()
    .map(|r| ChunkRow {
        torrent_uid: match &r[0] {
            Value::Blob(b) => b.clone(),
            _ => Vec::new(),
        },
        torrent_name: match &r[1] {
            Value::Text(t) => t.clone(),
            _ => String::new(),
        },
        index: match r[2] {
            Value::Integer(i) => i as u32,
            _ => 0,
        },
        state: match r[3] {
            Value::Integer(i) => i,
            _ => -1,
        },
        object_id: match &r[4] {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        },
    })
    .collect()
}

/// LAYOUT: the local file of a chunk.
pub fn chunk_file(home: &Path, c: &ChunkRow) -> PathBuf {
    home.join("cache")
        .join(hex::encode(&c.torrent_uid))
        .join(c.index.to_string())
}

/// Chunks recorded complete but not uploaded whose local file is gone: data that only
/// existed locally and was dropped. A chunk counts only if the catalog still says
/// "complete, not uploaded" after its file was found missing (no race with an upload
/// that just finished).
pub fn lost_chunks(home: &Path) -> Vec<String> {
    let db = home.join("bae.db");
    let missing: Vec<ChunkRow> = chunks(&db)
        .into_iter()
        .filter(|c| c.state == COMPLETE && !chunk_file(home, c).exists())
        .collect();
    if missing.is_empty() {
        return Vec::new();
    }
    let now = chunks(&db);
    missing
        .into_iter()
        .filter(|m| {
            now.iter().any(|c| {
                c.torrent_uid == m.torrent_uid && c.index == m.index && c.state == COMPLETE
            })
        })
        .map(|c| format!("{} chunk {}", c.torrent_name, c.index))
        .collect()
}

/// LAYOUT: the file of a chunk's object in the test S3 server's directory.
pub fn object_file(server: &super::s3::S3Server, prefix: &str, object_id: &str) -> PathBuf {
    server.object_path(
        super::s3::BUCKET,
        &format!("{prefix}/{}", bae::remote::object_key_for(object_id)),
    )
}

/// A small ext4 image loop-mounted at a directory (a disk that fills up). Unmounted and
/// its loop device detached on Drop.
pub struct LoopFs {
    image: PathBuf,
    pub mountpoint: PathBuf,
    /// Where a directory of the image is bind-mounted (see [`LoopFs::bind`]).
    binds: Vec<PathBuf>,
}

fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl LoopFs {
    pub fn create(image: &Path, mountpoint: &Path, size_mib: u64) -> LoopFs {
        std::fs::create_dir_all(mountpoint).unwrap();
        let img = image.to_str().unwrap();
        sh("truncate", &["-s", &format!("{size_mib}M"), img]).unwrap();
        sh(
            "mkfs.ext4",
            &["-q", "-F", "-m", "0", "-O", "^has_journal", img],
        )
        .unwrap();
        let fs = LoopFs {
            image: image.to_owned(),
            mountpoint: mountpoint.to_owned(),
            binds: Vec::new(),
        };
        sh("mount", &["-o", "loop", img, mountpoint.to_str().unwrap()]).unwrap();
        fs
    }

    fn devices(&self) -> Vec<String> {
        sh("losetup", &["-j", self.image.to_str().unwrap()])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(':').next().map(str::to_owned))
            .collect()
    }

    /// Bind-mounts the image's directory `sub` at `target`: `target` then lives on the
    /// image, while the rest of the image (the ballast) stays out of its sight.
    pub fn bind(&mut self, sub: &str, target: &Path) {
        let src = self.mountpoint.join(sub);
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(target).unwrap();
        sh(
            "mount",
            &["--bind", src.to_str().unwrap(), target.to_str().unwrap()],
        )
        .unwrap();
        self.binds.push(target.to_owned());
    }

    /// Takes all but `leave_bytes` of the free space with a preallocated ballast file
    /// (online resizing is not allowed in containers; freeing the ballast is how space
    /// comes back, as when a user deletes something).
    pub fn fill_leaving(&self, leave_bytes: u64) -> Result<(), String> {
        let take = self.free_bytes().saturating_sub(leave_bytes);
        sh(
            "fallocate",
            &["-l", &take.to_string(), self.ballast().to_str().unwrap()],
        )
        .map(|_| ())
    }

    /// Deletes the ballast: the space comes back.
    pub fn free_ballast(&self) -> Result<(), String> {
        std::fs::remove_file(self.ballast()).map_err(|e| e.to_string())
    }

    fn ballast(&self) -> PathBuf {
        self.mountpoint.join("ballast")
    }

    pub fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.mountpoint.to_str().unwrap()).unwrap();
        // SAFETY: statvfs with a valid C string and a zeroed out-struct.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut s) != 0 {
                return 0;
            }
            s.f_bavail * s.f_frsize
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        for b in self.binds.iter().rev() {
            let b = b.to_str().unwrap();
            if sh("umount", &[b]).is_err() {
                let _ = sh("umount", &["-l", b]);
            }
        }
        let mp = self.mountpoint.to_str().unwrap().to_owned();
        if sh("umount", &[&mp]).is_err() {
            let _ = sh("umount", &["-l", &mp]);
        }
        for dev in self.devices() {
            let _ = sh("losetup", &["-d", &dev]);
        }
    }
}

/// Serialises the scenarios that need most of the machine (a campaign that measures
/// re-downloads, and the fault proxy), so that they do not starve each other's reads
/// into timeouts on a 2-core machine.
pub fn heavy_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
