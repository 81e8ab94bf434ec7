//! Downloads that respect the cache (issue 11), through the real binary, a fast
//! python3-libtorrent seeder, the S3 server on 127.0.0.1 and the FUSE mount:
//! - a torrent several times the cache bound downloads with the cache directory kept near
//!   the bound (sampled every 100 ms), every chunk uploaded, every byte right;
//! - the cache on a small loop-mounted ext4 and a torrent more than twice its size: the
//!   free-space reserve stops writes before the disk is full, no ENOSPC reaches libtorrent,
//!   the catalog or a reader, and the download completes.
//!
//! The numbers seen (peak cache, rate) are printed, not asserted on.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::bae::{assert_same_files, Bae};
use common::chaos::LoopFs;
use common::s3::{S3Server, BUCKET};
use common::swarm::{make_album, python_torrent, PyPeer};

const MIB: u64 = 1 << 20;

/// Bytes allocated on disk under `dir` (what a full disk is made of).
fn allocated(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            total += allocated(&e.path());
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}

fn free_bytes(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: statvfs with a valid C string and a zeroed out-struct.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return u64::MAX;
        }
        s.f_bavail * s.f_frsize
    }
}

fn disk_total(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: statvfs with a valid C string and a zeroed out-struct.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut s), 0);
        s.f_blocks * s.f_frsize
    }
}

/// Samples the cache directory every 100 ms until stopped: the peak allocated size and
/// the least free space of its filesystem.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, u64, u64)>>,
}

impl Sampler {
    fn start(dir: PathBuf) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut peak, mut least_free, mut samples) = (0, u64::MAX, 0);
            while !s.load(Ordering::Relaxed) {
                peak = peak.max(allocated(&dir));
                least_free = least_free.min(free_bytes(&dir));
                samples += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            (peak, least_free, samples)
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// (peak allocated bytes, least free bytes, samples)
    fn finish(mut self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Album {
    _dir: tempfile::TempDir,
    name: String,
    root: PathBuf,
    torrent: PathBuf,
}

/// A flat album of `files` tracks of `mib_each` MiB (incompressible), as a hybrid torrent
/// with 256 KiB pieces (a chunk spans four pieces: the order pieces arrive in matters).
fn album(name: &str, files: usize, mib_each: usize) -> Album {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (1..=files)
        .map(|i| format!("{i:02} - Track {i}.flac"))
        .collect();
    let spec: Vec<(&str, usize)> = names
        .iter()
        .map(|n| (n.as_str(), mib_each * MIB as usize + 12_345))
        .collect();
    let root = make_album(&dir.path().join("seed"), name, &spec, 11);
    let torrent = dir.path().join("album.torrent");
    python_torrent(&root, &torrent, 256 << 10, "hybrid");
    Album {
        _dir: dir,
        name: name.into(),
        root,
        torrent,
    }
}

/// Adds the album paused, seeding unpinned, then lets it download from `seeder`; waits
/// until it is complete and every chunk is uploaded. Returns the download's seconds.
fn download(bae: &Bae, a: &Album, seeder: &PyPeer) -> f64 {
    let peer = seeder.addr().to_string();
    bae.ok(&[
        "add",
        a.torrent.to_str().unwrap(),
        "--peer",
        &peer,
        "--paused",
    ]);
    bae.ok(&["seed", &a.name, "on", "--no-pin"]);
    let t0 = Instant::now();
    bae.ok(&["resume", &a.name]);
    bae.wait_torrent("the download", Duration::from_secs(900), |t| {
        t["progress"].as_f64() == Some(1.0)
    });
    let secs = t0.elapsed().as_secs_f64();
    bae.wait_torrent("every chunk uploaded", Duration::from_secs(300), |t| {
        t["chunks_uploaded"] == t["chunks_total"] && t["chunks_total"].as_u64() > Some(0)
    });
    secs
}

fn no_disk_errors(bae: &Bae) {
    let s = bae.status_json();
    let t = &s["torrents"][0];
    assert!(t["error"].is_null(), "torrent error: {s:#}");
    let log = bae.log();
    for bad in [
        "write failed",
        "upload mode",
        "panicked",
        "hash read failed",
    ] {
        assert!(!log.contains(bad), "{bad:?} in the daemon log:\n{log}");
    }
}

#[test]
fn a_torrent_larger_than_the_cache_downloads_within_its_bound() {
    let s3_dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(s3_dir.path());
    let a = album("Backpressure Album", 30, 10);
    let size: u64 = 30 * (10 * MIB + 12_345);
    let seeder = PyPeer::seed(&a.torrent, a.root.parent().unwrap());
    let bae = Bae::with_s3(&s3.endpoint(), BUCKET, &[("cache_size", "\"64MiB\"")]);
    bae.mount();
    let sampler = Sampler::start(bae.home.join("cache"));
    let secs = download(&bae, &a, &seeder);
    let (peak, _, samples) = sampler.finish();
    let bound = 64 * MIB;
    println!(
        "BACKPRESSURE cache: {size} bytes in {secs:.1} s ({:.1} MB/s); peak cache {:.1} MiB \
         for a {} MiB bound ({:.2}x), {samples} samples",
        size as f64 / secs / 1e6,
        peak as f64 / MIB as f64,
        bound / MIB,
        peak as f64 / bound as f64
    );
    assert!(
        peak as f64 <= 1.25 * bound as f64,
        "the cache reached {peak} bytes, over 1.25 x {bound}"
    );
    no_disk_errors(&bae);
    // Every byte right through the mount (most chunks come back from S3).
    let sampler = Sampler::start(bae.home.join("cache"));
    assert_same_files(&a.root, &bae.mountpoint.join(&a.name));
    let (peak_reads, _, _) = sampler.finish();
    println!(
        "BACKPRESSURE cache: peak while reading back {:.1} MiB",
        peak_reads as f64 / MIB as f64
    );
    bae.umount();
}

#[test]
fn a_small_cache_disk_fills_to_its_reserve_never_past_it() {
    let s3_dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(s3_dir.path());
    let a = album("Small Disk Album", 30, 20);
    let size: u64 = 30 * (20 * MIB + 12_345);
    let seeder = PyPeer::seed(&a.torrent, a.root.parent().unwrap());
    let img_dir = tempfile::tempdir().unwrap();
    // Declared before the library: dropped after the daemon stopped, even on failure.
    let mut fs = LoopFs::create(
        &img_dir.path().join("cache.img"),
        &img_dir.path().join("disk"),
        256,
    );
    // A cache limit far above the disk: the disk's reserve is what binds.
    let bae = Bae::with_s3(&s3.endpoint(), BUCKET, &[("cache_size", "\"10GiB\"")]);
    fs.bind("cache", &bae.home.join("cache"));
    let disk_free = free_bytes(&bae.home.join("cache"));
    bae.mount();
    let sampler = Sampler::start(bae.home.join("cache"));
    let secs = download(&bae, &a, &seeder);
    let (peak, least_free, samples) = sampler.finish();
    println!(
        "BACKPRESSURE disk: {size} bytes in {secs:.1} s ({:.1} MB/s) on a 256 MiB disk \
         ({:.1} MiB free at start); peak cache {:.1} MiB, least free {:.1} MiB, {samples} samples",
        size as f64 / secs / 1e6,
        disk_free as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        least_free as f64 / MIB as f64
    );
    // The default reserve: 5 % of the disk (under 2 GiB). Writes never go below it;
    // 1 MiB is left for the filesystem's own metadata.
    let reserve = disk_total(&bae.home.join("cache")) / 20;
    assert!(
        least_free + MIB >= reserve,
        "free space fell to {least_free} bytes, under the {reserve}-byte reserve\n{}",
        bae.log()
    );
    no_disk_errors(&bae);
    assert!(
        !bae.log().contains("No space left"),
        "ENOSPC reached the store:\n{}",
        bae.log()
    );
    assert_same_files(&a.root, &bae.mountpoint.join(&a.name));
    assert!(bae.ok(&["verify", &a.name]).contains("ok"));
    bae.umount();
    drop(bae);
    drop(fs);
}
