//! A library of many small albums (issue 8) through the real binary, a python3-libtorrent
//! seeder of every album, the S3 server on 127.0.0.1 and the FUSE mount: one `bae add
//! --no-pin` of the whole library while the daemon runs; every album downloads, every
//! chunk is uploaded (none left behind in the queue), the cache stays near its bound (a
//! tenth of the library); after a restart `status` and `ls -R` show every album, python
//! leechers download a sample of them from bae (albums queued by libtorrent and evicted
//! from the cache among them), and a restore on a new machine finds every album with
//! every chunk uploaded.
//!
//! `BAE_LIBRARY_ALBUMS` sets the number of albums (default 2,000, the size at which the
//! first failure of this kind was seen; about 4.5 minutes in a debug build).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use common::bae::Bae;
use common::chaos::complete_and_uploaded;
use common::hostile::B;
use common::s3::{S3Server, BUCKET};
use common::swarm::PyPeer;

const PIECE: usize = 16 << 10;

fn albums() -> usize {
    std::env::var("BAE_LIBRARY_ALBUMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Album `i`: one file of 40–56 KiB of bytes unique to it, and its v1 torrent.
fn write_album(data_dir: &Path, torrent_dir: &Path, i: usize) -> PathBuf {
    let name = format!("album-{i:05}.flac");
    let len = (40 << 10) + (i * 977) % (16 << 10);
    let mut state = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(data_dir.join(&name), &data).unwrap();
    let pieces: Vec<u8> = data
        .chunks(PIECE)
        .flat_map(|p| Sha1::digest(p).to_vec())
        .collect();
    // Keys in sorted order, as bencode requires.
    let info = B::Dict(vec![
        (b"length".to_vec(), B::Int(len as i64)),
        (b"name".to_vec(), B::s(&name)),
        (b"piece length".to_vec(), B::Int(PIECE as i64)),
        (b"pieces".to_vec(), B::Str(pieces)),
    ]);
    let torrent = B::Dict(vec![(b"info".to_vec(), info)]);
    let path = torrent_dir.join(format!("{i:05}.torrent"));
    std::fs::write(&path, torrent.bytes()).unwrap();
    path
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Counts of what `status` says, for the failure message.
fn summary(s: &serde_json::Value) -> String {
    let ts = s["torrents"].as_array().cloned().unwrap_or_default();
    let complete = ts
        .iter()
        .filter(|t| t["progress"].as_f64().unwrap_or(0.0) >= 1.0)
        .count();
    let uploaded = ts.iter().filter(|t| complete_and_uploaded(t)).count();
    let mut states: std::collections::BTreeMap<String, usize> = Default::default();
    for t in &ts {
        *states
            .entry(t["state"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    format!(
        "{} torrents, {complete} complete, {uploaded} complete and uploaded; states {states:?}; \
         uploader {}; cache {}",
        ts.len(),
        s["uploader"],
        s["cache"]
    )
}

#[test]
fn a_library_many_times_the_cache_downloads_uploads_and_restores_whole() {
    let n = albums();
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let torrent_dir = work.path().join("torrents");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::create_dir_all(&torrent_dir).unwrap();
    let torrents: Vec<PathBuf> = (0..n)
        .map(|i| write_album(&data_dir, &torrent_dir, i))
        .collect();
    let library_bytes = dir_bytes(&data_dir);
    let s3_dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(s3_dir.path());
    let seeder = PyPeer::seed(&torrent_dir, &data_dir);
    // A bound a tenth of the library (each album is one small chunk), and few active
    // seeds: most albums wait in libtorrent's queue.
    let bound = (library_bytes / 10).max(1 << 20);
    let bound_arg = format!("\"{bound}B\"");
    let bae = Bae::with_s3(
        &s3.endpoint(),
        BUCKET,
        &[("cache_size", &bound_arg), ("active_seeds", "20")],
    );
    bae.mount();

    let peer = seeder.addr().to_string();
    let mut args: Vec<&str> = vec!["add", "--no-pin", "--peer", &peer];
    let paths: Vec<&str> = torrents.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(paths);
    let out = bae.ok(&args);
    assert_eq!(out.lines().filter(|l| l.starts_with("added ")).count(), n);

    // The cache's size, sampled every 250 ms from here to the end (restart, leechers,
    // reads through the mount included).
    let sampler = CacheSampler::start(bae.home.join("cache"));
    let deadline = Instant::now() + Duration::from_secs(120 + n as u64 / 2);
    let mut last_progress = (0usize, Instant::now());
    loop {
        let s = bae.status_json();
        let ts = s["torrents"].as_array().cloned().unwrap_or_default();
        let done = ts.iter().filter(|t| complete_and_uploaded(t)).count();
        if done == n {
            break;
        }
        if done > last_progress.0 {
            last_progress = (done, Instant::now());
        }
        assert!(
            Instant::now() < deadline && last_progress.1.elapsed() < Duration::from_secs(60),
            "the library did not finish ({done} of {n} albums complete and uploaded, none more \
             for {:.0} s): {}\nlog: {}",
            last_progress.1.elapsed().as_secs_f64(),
            summary(&s),
            common::chaos::tail(&bae.log(), 60)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let peak = sampler.peak();
    println!(
        "LIBRARY {n} albums, {library_bytes} bytes: peak cache {peak} bytes for a {bound} \
         bound ({:.2}x) during the download",
        peak as f64 / bound as f64
    );
    // Chunk files are small here, so the write gate's margins weigh more: 1.5x.
    assert!(
        peak as f64 <= 1.5 * bound as f64,
        "the cache reached {peak} bytes, over 1.5 x {bound}"
    );
    drop(seeder);

    bae.umount();
    bae.mount();
    let s = bae.status_json();
    let ts = s["torrents"].as_array().cloned().unwrap_or_default();
    assert_eq!(ts.len(), n);
    assert!(
        ts.iter().all(complete_and_uploaded),
        "after a restart: {}",
        summary(&s)
    );
    let listed = common::chaos::walk(&bae.mountpoint);
    assert_eq!(listed.len(), n, "ls -R of the mount");

    // Third-party leechers download a sample from bae, chunks fetched back from S3.
    let port = s["listen_port"].as_u64().unwrap() as u16;
    let bae_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for i in [0, n / 2, n - 1] {
        let name = format!("album-{i:05}.flac");
        let into = work.path().join(format!("leech-{i}"));
        std::fs::create_dir_all(&into).unwrap();
        let mut leecher = PyPeer::leech(&torrents[i], &into, bae_addr);
        leecher.wait_line("DONE");
        assert_eq!(
            sha256_of(&into.join(&name)),
            sha256_of(&data_dir.join(&name)),
            "{name} from bae differs"
        );
    }

    // Every album reads back right through the mount, most from the remote.
    for i in (0..n).step_by((n / 20).max(1)) {
        let name = format!("album-{i:05}.flac");
        let got = std::fs::read(bae.mountpoint.join(&name).join(&name)).unwrap();
        assert!(
            got == std::fs::read(data_dir.join(&name)).unwrap(),
            "{name} differs"
        );
    }
    bae.umount();
    let (peak, samples) = sampler.stop();
    println!("LIBRARY peak cache {peak} bytes over the whole run ({samples} samples)");
    assert!(
        peak as f64 <= 1.5 * bound as f64,
        "the cache reached {peak} bytes while seeding and reading, over 1.5 x {bound}"
    );

    let restored = Bae::restored("s3://bae-test/lib", &s3.endpoint(), &bae.home.join("key"))
        .unwrap_or_else(|e| panic!("restore failed: {e}"));
    let rows = common::chaos::query(
        &restored.home.join("bae.db"),
        "SELECT COUNT(*), COALESCE(SUM(n_uploaded), 0) FROM torrents",
    );
    let as_i = |v: &rusqlite::types::Value| match v {
        rusqlite::types::Value::Integer(i) => *i,
        other => panic!("{other:?}"),
    };
    let (count, uploaded) = (as_i(&rows[0][0]), as_i(&rows[0][1]));
    assert_eq!(count as usize, n, "albums restored");
    assert_eq!(
        uploaded as usize, n,
        "chunks restored as uploaded (one per album)"
    );
}

/// Samples a directory's size every 250 ms on a thread until stopped.
struct CacheSampler {
    peak: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CacheSampler {
    fn start(dir: PathBuf) -> CacheSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, samples, stop) = (peak.clone(), samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    peak.fetch_max(dir_bytes(&dir), Ordering::SeqCst);
                    samples.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        };
        CacheSampler {
            peak,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// The peak and the number of samples.
    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (self.peak(), self.samples.load(Ordering::SeqCst))
    }
}

impl Drop for CacheSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex::encode(<sha2::Sha256 as Digest>::digest(&bytes))
}

fn names(bae: &Bae) -> Vec<(String, bool)> {
    let s = bae.status_json();
    let mut v: Vec<(String, bool)> = s["torrents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or("").to_owned(),
                t["pinned"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn adding_many_torrents_is_all_or_nothing() {
    let work = tempfile::tempdir().unwrap();
    let t: Vec<String> = (0..4)
        .map(|i| {
            write_album(work.path(), work.path(), i)
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let bad = work.path().join("bad.torrent");
    std::fs::write(&bad, b"d4:infoi3ee").unwrap();
    let bad = bad.to_str().unwrap();
    let bae = Bae::new();

    let err = bae.fails(&["add", &t[0], bad, &t[1]]);
    assert!(err.contains("bad.torrent"), "{err}");
    assert!(
        names(&bae).is_empty(),
        "a bad source among good ones adds nothing"
    );
    let err = bae.fails(&["add", &t[0], &t[0]]);
    assert!(err.contains("same torrent"), "{err}");
    assert!(names(&bae).is_empty());

    let out = bae.ok(&["add", "--no-pin", &t[0], &t[1], &t[2]]);
    assert_eq!(out.lines().filter(|l| l.starts_with("added ")).count(), 3);
    let added = names(&bae);
    assert_eq!(added.len(), 3);
    assert!(
        added.iter().all(|(_, pinned)| !pinned),
        "--no-pin: {added:?}"
    );

    // The new one is recorded first, then the duplicate fails: the new one is taken back.
    let err = bae.fails(&["add", &t[3], &t[2]]);
    assert!(err.contains("taken back"), "{err}");
    assert_eq!(names(&bae), added);
}
