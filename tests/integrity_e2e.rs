//! Every byte served is verified, and what was uploaded survives a crash: the findings
//! of the integrity review, each through the real binary, a real FUSE mount, real peers
//! and a real S3 server on 127.0.0.1.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::bae::{assert_same_files, make_flac_album, Bae};
use common::s3::{S3Server, BUCKET};
use common::swarm::{python_torrent, PyPeer};

struct Album {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    torrent: PathBuf,
    name: String,
}

fn album(name: &str, seconds: u32, piece_len: u64) -> Album {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_flac_album(&tmp.path().join("seed"), name, seconds, 3);
    let torrent = tmp.path().join("album.torrent");
    python_torrent(&dir, &torrent, piece_len, "hybrid");
    Album {
        _dir: tmp,
        dir,
        torrent,
        name: name.to_owned(),
    }
}

/// Downloads the album into `bae` from a seeder that goes away afterwards.
fn download(bae: &Bae, a: &Album) {
    let seeder = PyPeer::seed(&a.torrent, a.dir.parent().unwrap());
    bae.add_from(&a.torrent, seeder.addr());
}

/// The chunk files of the library's only torrent, by index.
fn chunk_files(bae: &Bae) -> Vec<PathBuf> {
    let cache = bae.home.join("cache");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one torrent in {}", cache.display());
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(&dirs[0])
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let i = p.file_name()?.to_str()?.parse().ok()?;
            Some((i, p))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn drop_page_cache() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

fn torrent_status<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["torrents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no torrent {name} in {s:#}"))
}

fn wait_uploaded(bae: &Bae, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = bae.status_json();
        let t = torrent_status(&s, name);
        if t["chunks_uploaded"] == t["chunks_total"] && t["progress"].as_f64() == Some(1.0) {
            return;
        }
        assert!(Instant::now() < deadline, "uploads of {name}: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Damaged chunk files of an uploaded torrent — altered, deleted, truncated, while the
/// daemon was stopped and while it runs — are never served: they are fetched again.
#[test]
fn damaged_local_chunks_are_fetched_again_never_served() {
    let a = album("Damaged Album", 12, 256 * 1024);
    let seeder = PyPeer::seed(&a.torrent, a.dir.parent().unwrap());
    let bae = Bae::new();
    bae.mount();
    bae.add_from(&a.torrent, seeder.addr());
    drop(seeder);
    wait_uploaded(&bae, &a.name);
    bae.umount();

    let files = chunk_files(&bae);
    assert!(files.len() >= 4, "{files:?}");
    overwrite(&files[0], 1000, &[0xAA; 64]);
    std::fs::remove_file(&files[1]).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[2])
        .unwrap();
    f.set_len(1000).unwrap();
    drop(f);

    bae.mount();
    let mounted = bae.mountpoint.join(&a.name);
    assert_same_files(&a.dir, &mounted);
    let s = bae.status_json();
    assert!(
        // The altered and the truncated file (a missing one is simply not local).
        s["integrity"]["damaged_local_chunks"].as_u64().unwrap() >= 2,
        "{s:#}"
    );
    assert!(
        s["warnings"].to_string().contains("damaged"),
        "status says so: {s:#}"
    );

    // While the daemon runs: altered in place with the modification time restored.
    let files = chunk_files(&bae);
    let victim = &files[files.len() / 2];
    let mtime = std::fs::metadata(victim).unwrap().modified().unwrap();
    overwrite(victim, 5, &[0x55; 64]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    drop_page_cache();
    assert_same_files(&a.dir, &mounted);
    bae.umount();
}

/// A damaged chunk that is not in the remote (uploads fail: the S3 server is down) is
/// revoked: its pieces are downloaded again from the peer, and reads wait for them
/// instead of getting wrong bytes.
#[test]
fn damaged_chunks_not_in_the_remote_are_downloaded_again() {
    let a = album("Revoked Album", 10, 256 * 1024);
    let s3dir = tempfile::tempdir().unwrap();
    let mut server = S3Server::start(s3dir.path());
    let bae = Bae::with_s3(&server.endpoint(), BUCKET, &[]);
    server.stop();
    let seeder = PyPeer::seed(&a.torrent, a.dir.parent().unwrap());
    bae.mount();
    bae.add_from(&a.torrent, seeder.addr());
    let s = bae.status_json();
    assert_eq!(torrent_status(&s, &a.name)["chunks_uploaded"], 0, "{s:#}");

    let files = chunk_files(&bae);
    overwrite(&files[1], 4096, &[0x42; 64]);
    let mounted = bae.mountpoint.join(&a.name);
    // The read waits while libtorrent downloads the revoked pieces again.
    assert_same_files(&a.dir, &mounted);
    let s = bae.status_json();
    assert!(
        s["integrity"]["revoked_chunks"].as_u64().unwrap() >= 1,
        "{s:#}"
    );
    let t = torrent_status(&s, &a.name);
    assert_eq!(t["progress"].as_f64(), Some(1.0), "{s:#}");
    drop(seeder);
    bae.umount();
}

/// A cache full of pinned chunks (a seeding torrent larger than the cache) does not stop
/// an evicted torrent from being read or seeded: each chunk is fetched once.
#[test]
fn a_cache_full_of_pinned_chunks_still_serves_evicted_torrents() {
    let big = album("Pinned Album", 30, 256 * 1024);
    let small = album("Evicted Album", 8, 256 * 1024);
    let bae = Bae::new();
    bae.mount();
    download(&bae, &small);
    wait_uploaded(&bae, &small.name);
    bae.ok(&["seed", &small.name, "on", "--no-pin"]);
    download(&bae, &big);
    wait_uploaded(&bae, &big.name);
    // Smaller than the pinned torrent alone.
    let s = bae.status_json();
    let pinned = torrent_status(&s, &big.name)["chunks_total"]
        .as_u64()
        .unwrap();
    let small_chunks = torrent_status(&s, &small.name)["chunks_total"]
        .as_u64()
        .unwrap();
    bae.umount();
    let mp = bae.mountpoint.to_str().unwrap().to_owned();
    let limit = format!("{}MiB", pinned / 2);
    bae.ok(&["mount", &mp, "--cache-size", &limit]);
    bae.ok(&["evict"]);
    let s = bae.status_json();
    assert_eq!(torrent_status(&s, &small.name)["chunks_local"], 0, "{s:#}");

    assert_same_files(&small.dir, &bae.mountpoint.join(&small.name));
    let fetched = bae.status_json()["integrity"]["fetched_chunks"]
        .as_u64()
        .unwrap();
    assert!(
        fetched <= small_chunks,
        "{fetched} fetches for a torrent of {small_chunks} chunks"
    );
    // And a third-party client downloads it from bae.
    let port = bae.status_json()["listen_port"].as_u64().unwrap() as u16;
    let got = tempfile::tempdir().unwrap();
    let mut leecher = PyPeer::leech(
        &small.torrent,
        got.path(),
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    );
    leecher.wait_line("DONE");
    assert_same_files(&small.dir, &got.path().join(&small.name));
    bae.umount();
}

/// `kill -9` right after an add and during uploads: a new machine restores every torrent
/// that was added and every chunk the old one called uploaded, from the remote alone.
#[test]
fn restore_after_kill9_finds_every_torrent_and_uploaded_chunk() {
    let s3dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(s3dir.path());
    let a = album("Crash Album", 8, 256 * 1024);
    let late = album("Added Late", 2, 64 * 1024);
    let first = Bae::with_s3(&server.endpoint(), BUCKET, &[]);
    first.mount();
    download(&first, &a);
    wait_uploaded(&first, &a.name);
    first.ok(&["add", late.torrent.to_str().unwrap(), "--paused"]);
    first.kill9();

    let second = Bae::restored(
        &format!("s3://{BUCKET}/lib"),
        &server.endpoint(),
        &first.home.join("key"),
    )
    .unwrap();
    let s = second.status_json();
    let names: Vec<&str> = s["torrents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&a.name.as_str()), "{s:#}");
    assert!(names.contains(&late.name.as_str()), "{s:#}");
    let t = torrent_status(&s, &a.name);
    assert_eq!(t["chunks_uploaded"], t["chunks_total"], "{s:#}");
    second.mount();
    assert_same_files(&a.dir, &second.mountpoint.join(&a.name));
    second.umount();
}

/// A copy of a library with another (valid) key is refused at mount with one clear
/// error, and the remote's metadata is left as it was.
#[test]
fn a_wrong_key_is_refused_at_mount_and_writes_nothing() {
    let s3dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(s3dir.path());
    let owner = Bae::with_s3(&server.endpoint(), BUCKET, &[]);
    owner.mount();
    owner.umount();
    let meta = server.object_path(BUCKET, "lib/meta/library");
    let before = std::fs::read(&meta).unwrap();

    let copy = tempfile::tempdir().unwrap();
    let home = copy.path().join("home");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&owner.home)
        .arg(&home)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(home.join("key")).unwrap();
    bae::remote::crypto::Key::write_new(&home.join("key")).unwrap();
    let mnt = copy.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out = owner
        .cmd(&["mount", mnt.to_str().unwrap()])
        .env("BAE_HOME", &home)
        .output()
        .unwrap();
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(&mnt)
        .status();
    assert!(!out.status.success(), "mount with the wrong key succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong key"), "{err}");
    assert_eq!(std::fs::read(&meta).unwrap(), before);
}

/// `verify --repair` replaces what `verify` found: a tampered remote object is uploaded
/// again from the good local copy, a damaged local copy is fetched again; then verify
/// passes.
#[test]
fn verify_repair_replaces_damaged_copies() {
    let a = album("Repair Album", 8, 256 * 1024);
    let seeder = PyPeer::seed(&a.torrent, a.dir.parent().unwrap());
    let bae = Bae::new();
    bae.mount();
    bae.add_from(&a.torrent, seeder.addr());
    drop(seeder);
    wait_uploaded(&bae, &a.name);
    let catalog = bae::catalog::Catalog::open(&bae.home.join("bae.db")).unwrap();
    let t = catalog.find(&a.name).unwrap();
    let chunks = catalog.chunks(t.id).unwrap();
    drop(catalog);
    let object = bae.home.join("remote").join(bae::remote::object_key_for(
        chunks[0].object_id.as_deref().unwrap(),
    ));
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    overwrite(&chunk_files(&bae)[1], 10, &[7; 64]);

    let out = bae.run(&["verify", &a.name]);
    assert_eq!(out.status.code(), Some(1));
    let out = bae.ok(&["verify", &a.name, "--repair"]);
    assert!(out.contains("1 uploaded again"), "{out}");
    wait_uploaded(&bae, &a.name);
    let out = bae.ok(&["verify", &a.name]);
    assert!(!out.contains("problem"), "{out}");
    bae.ok(&["seed", &a.name, "on", "--no-pin"]);
    bae.ok(&["evict"]);
    drop_page_cache();
    assert_same_files(&a.dir, &bae.mountpoint.join(&a.name));
    bae.umount();
}

/// `remove --purge` with the remote down removes the torrent here and leaves a durable
/// record of the remote clean-up: the daemon finishes it once the remote is back, so no
/// object leaks.
#[test]
fn an_interrupted_purge_is_finished_later_and_leaks_nothing() {
    let s3dir = tempfile::tempdir().unwrap();
    let mut server = S3Server::start(s3dir.path());
    let a = album("Purged Album", 4, 256 * 1024);
    let bae = Bae::with_s3(&server.endpoint(), BUCKET, &[]);
    bae.mount();
    download(&bae, &a);
    wait_uploaded(&bae, &a.name);
    bae.umount();
    let bucket = s3dir.path().join(BUCKET).join("lib");
    let count = |sub: &str| walk(&bucket.join(sub)).len();
    assert!(count("chunks") > 0);
    server.stop();
    let err = bae.fails(&["remove", &a.name, "--purge"]);
    assert!(err.contains("retried"), "{err}");
    assert!(bae.status_json()["torrents"].as_array().unwrap().is_empty());
    server.restart();
    bae.mount();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count("chunks") > 0 || count("meta/t") > 0 {
        assert!(Instant::now() < deadline, "the purge was never finished");
        std::thread::sleep(Duration::from_millis(200));
    }
    bae.umount();
}

/// The remote refuses uploads (bad credentials): the chunks stay in the cache, and
/// `status` says why instead of retrying silently.
#[test]
fn refused_uploads_are_parked_and_shown() {
    let s3dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(s3dir.path());
    let a = album("Refused Album", 3, 256 * 1024);
    let bae = Bae::with_s3(&server.endpoint(), BUCKET, &[]);
    let mp = bae.mountpoint.to_str().unwrap().to_owned();
    let out = bae
        .cmd(&["mount", &mp])
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    download(&bae, &a);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = bae.status_json();
        if s["uploader"]["parked"].as_u64().unwrap_or(0) > 0 {
            assert!(s["warnings"].to_string().contains("refused"), "{s:#}");
            assert_eq!(torrent_status(&s, &a.name)["chunks_uploaded"], 0);
            assert_eq!(
                torrent_status(&s, &a.name)["chunks_local"],
                torrent_status(&s, &a.name)["chunks_total"]
            );
            break;
        }
        assert!(Instant::now() < deadline, "no refusal shown: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_same_files(&a.dir, &bae.mountpoint.join(&a.name));
    bae.umount();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Verified pieces inside chunks not complete yet have no chunk hash: altered while the
/// daemon was stopped, they are checked against the torrent's hashes at the next start
/// and downloaded again, never completed into a chunk with wrong bytes.
#[test]
fn altered_pieces_of_unfinished_chunks_are_downloaded_again_after_a_restart() {
    const PIECE: u64 = 256 * 1024;
    let a = album("Unfinished Album", 20, PIECE);
    // A seeder holding every other piece of each file: every chunk (4 pieces) is left
    // partial, with verified pieces in it.
    let partial = tempfile::tempdir().unwrap();
    let copy = partial.path().join(&a.name);
    std::fs::create_dir_all(&copy).unwrap();
    for f in walk(&a.dir) {
        let mut bytes = std::fs::read(&f).unwrap();
        for (i, piece) in bytes.chunks_mut(PIECE as usize).enumerate() {
            if i % 2 == 1 {
                piece.fill(0);
            }
        }
        std::fs::write(copy.join(f.strip_prefix(&a.dir).unwrap()), bytes).unwrap();
    }
    let seeder = PyPeer::seed_partial(&a.torrent, partial.path());
    let port = seeder.addr().port();
    let bae = Bae::new();
    bae.mount();
    bae.ok(&[
        "add",
        a.torrent.to_str().unwrap(),
        "--peer",
        &seeder.addr().to_string(),
    ]);
    // Wait until bae has what the seeder has.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (0.0, Instant::now());
    loop {
        let s = bae.status_json();
        let n = torrent_status(&s, &a.name)["progress"]
            .as_f64()
            .unwrap_or(0.0);
        if n != last {
            (last, since) = (n, Instant::now());
        } else if n > 0.0 && since.elapsed() > Duration::from_secs(3) {
            assert!(torrent_status(&s, &a.name)["progress"].as_f64() < Some(1.0));
            break;
        }
        assert!(Instant::now() < deadline, "partial download: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    bae.umount();
    drop(seeder);

    // While stopped: the first bytes of every piece of every chunk file are altered
    // (the verified ones among them must not survive).
    let files = chunk_files(&bae);
    assert!(!files.is_empty());
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        for piece in 0..4 {
            if piece * PIECE + 164 <= len {
                overwrite(f, piece * PIECE + 100, &[0x5a; 64]);
            }
        }
    }
    // The whole album again, from a seeder where the old one was.
    let seeder = PyPeer::seed_at(&a.torrent, a.dir.parent().unwrap(), port);
    bae.mount();
    bae.wait_torrent("the download to complete", Duration::from_secs(90), |t| {
        t["progress"].as_f64() == Some(1.0)
    });
    assert_same_files(&a.dir, &bae.mountpoint.join(&a.name));
    let s = bae.status_json();
    assert!(
        s["integrity"]["revoked_chunks"].as_u64().unwrap() >= 1,
        "{s:#}"
    );
    assert!(bae.log().contains("changed on disk while bae was stopped"));
    drop(seeder);
    bae.umount();
}

fn rss_bytes(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib << 10
}

/// A small .torrent declaring 4 TiB (65,536 pieces of 64 MiB) costs what its metadata
/// costs, not what it declares: the catalog and the daemon barely grow, and it shows
/// with its full size in `status` and the mount.
#[test]
fn a_huge_declared_size_costs_nothing_before_data_arrives() {
    const TIB: i64 = 1 << 40;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.torrent");
    let bytes = common::hostile::declaring("Huge Declared", 4 * TIB, 64 << 20, 7);
    std::fs::write(&path, &bytes).unwrap();
    let bae = Bae::new();
    bae.mount();
    let pid = bae.daemon_pid().expect("daemon pid");
    let db_size = || {
        std::fs::metadata(bae.home.join("bae.db")).unwrap().len()
            + std::fs::metadata(bae.home.join("bae.db-wal"))
                .map(|m| m.len())
                .unwrap_or(0)
    };
    let (db_before, rss_before) = (db_size(), rss_bytes(pid));
    bae.ok(&["add", path.to_str().unwrap()]);
    // Let it settle: added to the session, looking for peers that never come.
    std::thread::sleep(Duration::from_secs(3));
    let s = bae.status_json();
    let t = torrent_status(&s, "Huge Declared");
    assert_eq!(t["size_bytes"].as_u64(), Some(4 << 40), "{s:#}");
    let (db_growth, rss_growth) = (
        db_size() - db_before,
        rss_bytes(pid).saturating_sub(rss_before),
    );
    println!(
        "HUGE: {} byte .torrent; catalog +{db_growth} bytes, daemon RSS +{} MiB",
        bytes.len(),
        rss_growth >> 20
    );
    // Its metadata (1.3 MB) and a little more, not per-chunk rows for 4 Mi chunks.
    assert!(
        db_growth < 3 * bytes.len() as u64 + (1 << 20),
        "catalog grew by {db_growth}"
    );
    assert!(rss_growth < 64 << 20, "daemon RSS grew by {rss_growth}");
    let f = bae
        .mountpoint
        .join("Huge Declared")
        .join("01 - Everything.flac");
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 4 << 40);
    bae.umount();
}

/// The remote object under `dir` whose key ends with `suffix` (the S3 server keeps one
/// file per object).
fn remote_object(dir: &Path, suffix: &str) -> Option<PathBuf> {
    walk(dir)
        .into_iter()
        .find(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)))
}

/// A pause or a seeding change rewrites a small flags object, not the torrent's object
/// with its metainfo; a restore sees the new flags.
#[test]
fn flag_changes_write_a_small_object_and_restore_sees_them() {
    let s3dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(s3dir.path());
    let a = album("Flags Album", 4, 64 * 1024);
    let first = Bae::with_s3(&server.endpoint(), BUCKET, &[]);
    first.mount();
    download(&first, &a);
    wait_uploaded(&first, &a.name);
    let body_path = remote_object(s3dir.path(), "/torrent").expect("the torrent object");
    let body = std::fs::read(&body_path).unwrap();
    assert!(remote_object(s3dir.path(), "/flags").is_none());

    first.ok(&["seed", &a.name, "off"]);
    first.ok(&["pause", &a.name]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let flags = loop {
        if let Some(p) = remote_object(s3dir.path(), "/flags") {
            // The last change written (paused) is the one a restore must see.
            let s = first.status_json();
            if torrent_status(&s, &a.name)["paused"] == true {
                break p;
            }
        }
        assert!(Instant::now() < deadline, "no flags object written");
        std::thread::sleep(Duration::from_millis(200));
    };
    first.umount();
    assert_eq!(
        std::fs::read(&body_path).unwrap(),
        body,
        "the torrent object was rewritten for a flag change"
    );
    let flags_len = std::fs::metadata(&flags).unwrap().len();
    assert!(
        flags_len < 512 && flags_len * 4 < body.len() as u64,
        "flags object of {flags_len} bytes (torrent object {})",
        body.len()
    );

    let second = Bae::restored(
        &format!("s3://{BUCKET}/lib"),
        &server.endpoint(),
        &first.home.join("key"),
    )
    .unwrap();
    let s = second.status_json();
    let t = torrent_status(&s, &a.name);
    assert_eq!(t["paused"], true, "{s:#}");
    assert_eq!(t["seeding"], false, "{s:#}");
    assert_eq!(t["chunks_uploaded"], t["chunks_total"], "{s:#}");
}

/// A complete album that does not seed and has nothing local is dormant after a restart
/// (no cache directory, no entry of its chunks in memory): `status` still shows it
/// complete and uploaded with nothing local, and every file reads right through the
/// mount, from the remote, and is then cached.
#[test]
fn a_dormant_album_reads_right_after_a_restart() {
    let a = album("Dormant Album", 8, 128 * 1024);
    let bae = Bae::new();
    bae.mount();
    download(&bae, &a);
    bae.empty_cache(&a.name);
    bae.ok(&["seed", &a.name, "off"]);
    bae.umount();
    bae.mount();
    let cache = bae.home.join("cache");
    let dirs = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(dirs, 0, "an evicted album keeps no cache directory");
    let s = bae.status_json();
    let t = torrent_status(&s, &a.name);
    assert_eq!(t["progress"].as_f64(), Some(1.0), "{s:#}");
    assert_eq!(t["chunks_uploaded"], t["chunks_total"], "{s:#}");
    assert_eq!(t["chunks_local"], 0, "{s:#}");
    drop_page_cache();
    assert_same_files(&a.dir, &bae.mountpoint.join(&a.name));
    let s = bae.status_json();
    let t = torrent_status(&s, &a.name);
    assert!(t["chunks_local"].as_u64().unwrap() > 0, "{s:#}");
    assert!(
        s["integrity"]["fetched_chunks"].as_u64().unwrap() > 0,
        "{s:#}"
    );
    bae.umount();
}
