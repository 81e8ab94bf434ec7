//! `bae import` and `bae verify` through the real binary, as a user meets them:
//! - importing an existing torrent's content (v1, v2-only, hybrid) checks every piece;
//! - a file edited in place after the torrent was made (size and mtime kept) is refused,
//!   with the daemon and without, and nothing is recorded;
//! - `verify` names a local piece whose chunk file was altered, and remote chunks that
//!   were tampered with or deleted, and exits non-zero.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::bae::Bae;
use common::swarm::{make_album, python_torrent};

const NAME: &str = "Import Artist - Import Album";
const ALBUM: &[(&str, usize)] = &[
    ("01 - First.flac", 1_234_567),
    ("02 - Second.flac", 2_345_678),
    ("03 - Short.flac", 20_000),
    ("cover.jpg", 150_001),
];
const PIECE_LEN: u64 = 64 * 1024;

fn album(dir: &Path, seed: u64) -> PathBuf {
    make_album(dir, NAME, ALBUM, seed)
}

/// Overwrites `len` bytes at `offset` of `path` with 0x5a, keeping its size and mtime.
fn edit_in_place(path: &Path, offset: u64, len: usize) {
    let reference = path.with_extension("mtime-ref");
    let st = std::process::Command::new("touch")
        .arg("-r")
        .arg(path)
        .arg(&reference)
        .status()
        .unwrap();
    assert!(st.success());
    let size = std::fs::metadata(path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&vec![0x5a; len]).unwrap();
    drop(f);
    let st = std::process::Command::new("touch")
        .arg("-r")
        .arg(&reference)
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::remove_file(&reference).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), size);
}

/// Torrent directories in the library's cache.
fn cache_dirs(bae: &Bae) -> Vec<PathBuf> {
    match std::fs::read_dir(bae.home.join("cache")) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn torrent_count(bae: &Bae) -> usize {
    bae.status_json()["torrents"].as_array().unwrap().len()
}

#[test]
fn importing_an_existing_torrent_checks_every_piece() {
    for mode in ["v1", "v2", "hybrid"] {
        let dir = tempfile::tempdir().unwrap();
        let album = album(dir.path(), 3);
        let torrent = dir.path().join("album.torrent");
        python_torrent(&album, &torrent, PIECE_LEN, mode);
        let bae = Bae::new();
        let out = bae.ok(&[
            "import",
            album.to_str().unwrap(),
            "--torrent",
            torrent.to_str().unwrap(),
        ]);
        assert!(out.contains("every piece checked"), "{mode}: {out}");
        let s = bae.status_json();
        assert_eq!(s["torrents"][0]["progress"], 1.0, "{mode}: {s:#}");
        assert_eq!(s["torrents"][0]["paused"], false, "{mode}: {s:#}");
        let v = bae.ok(&["verify", NAME]);
        let pieces = ALBUM
            .iter()
            .map(|f| f.1 as u64)
            .sum::<u64>()
            .div_ceil(PIECE_LEN);
        // v2 and hybrid layouts pad files to pieces, so they have a few more.
        let checked: u64 = v
            .split(" of ")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{mode}: {v}"));
        assert!(checked >= pieces, "{mode}: {v}");
        assert!(
            v.contains(&format!("{checked} of {checked} pieces")),
            "{mode}: {v}"
        );
        // --torrent and the options for making a torrent do not mix.
        bae.fails(&[
            "import",
            album.to_str().unwrap(),
            "--torrent",
            torrent.to_str().unwrap(),
            "--piece-size",
            "64KiB",
        ]);
    }
}

#[test]
fn a_file_edited_in_place_after_the_torrent_was_made_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let album = album(dir.path(), 5);
    let torrent = dir.path().join("album.torrent");
    // The torrent is made (and the album imported) by one library...
    let maker = Bae::new();
    maker.ok(&[
        "import",
        album.to_str().unwrap(),
        "--piece-size",
        "64KiB",
        "--out",
        torrent.to_str().unwrap(),
    ]);
    // ...then a file changes in place, keeping its size and mtime.
    edit_in_place(&album.join("02 - Second.flac"), 700_000, 10);

    // Another library imports the torrent from the folder: refused, nothing recorded.
    let bae = Bae::new();
    let args = [
        "import",
        album.to_str().unwrap(),
        "--torrent",
        torrent.to_str().unwrap(),
    ];
    let err = bae.fails(&args);
    assert!(err.contains("02 - Second.flac"), "{err}");
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(torrent_count(&bae), 0);
    assert!(cache_dirs(&bae).is_empty(), "{:?}", cache_dirs(&bae));

    // The same through a running daemon.
    bae.mount();
    let err = bae.fails(&args);
    assert!(err.contains("02 - Second.flac"), "{err}");
    assert_eq!(torrent_count(&bae), 0);
    assert!(cache_dirs(&bae).is_empty(), "{:?}", cache_dirs(&bae));
    assert!(
        common::bae::file_names(&bae.mountpoint).is_empty(),
        "the mount shows a refused import"
    );
    // An unchanged copy imports fine afterwards.
    let good = tempfile::tempdir().unwrap();
    let good_album = self::album(good.path(), 5);
    bae.ok(&[
        "import",
        good_album.to_str().unwrap(),
        "--torrent",
        torrent.to_str().unwrap(),
    ]);
    assert_eq!(torrent_count(&bae), 1);
    bae.umount();
}

/// Chunk index and offset in it where piece `piece` starts.
fn piece_in_chunk(piece: u64) -> (u64, u64) {
    let stream = piece * PIECE_LEN;
    (stream >> 20, stream & ((1 << 20) - 1))
}

fn chunk_file(bae: &Bae, index: u64) -> PathBuf {
    let dirs = cache_dirs(bae);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].join(index.to_string())
}

#[test]
fn verify_names_a_local_piece_that_was_altered() {
    let dir = tempfile::tempdir().unwrap();
    let album = album(dir.path(), 9);
    let bae = Bae::new();
    bae.ok(&["import", album.to_str().unwrap(), "--piece-size", "64KiB"]);
    assert!(bae.ok(&["verify", NAME]).contains("ok"));

    // Offline: 64 bytes of piece 20 (chunk 1) overwritten in the cache.
    let (chunk, off) = piece_in_chunk(20);
    edit_in_place(&chunk_file(&bae, chunk), off + 100, 64);
    let out = bae.run(&["verify", NAME]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("bad pieces: 20\n"), "{stdout}");
    assert!(
        stdout.contains("piece 20: local copy does not match"),
        "{stdout}"
    );

    // Through the daemon. Its uploader re-hashes chunk 1 before sealing it, finds it
    // damaged and revokes its pieces (they are to be downloaded again), so verify no
    // longer counts them as verified; then a second piece is damaged (chunk 2).
    bae.mount();
    bae.wait_torrent("uploads", Duration::from_secs(60), |_| {
        let s = bae.status_json();
        s["uploader"]["queued"] == 0 && s["uploader"]["in_flight"] == 0
    });
    let s = bae.status_json();
    assert!(
        s["integrity"]["revoked_chunks"].as_u64().unwrap() >= 1,
        "{s:#}"
    );
    let (chunk, off) = piece_in_chunk(40);
    edit_in_place(&chunk_file(&bae, chunk), off, 64);
    let out = bae.run(&["verify", NAME]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", bae.log());
    assert!(stdout.contains("bad pieces: 40\n"), "{stdout}");
    bae.umount();
}

#[test]
fn verify_names_tampered_and_missing_remote_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let album = album(dir.path(), 13);
    let bae = Bae::new();
    bae.ok(&["import", album.to_str().unwrap(), "--piece-size", "64KiB"]);
    bae.mount();
    bae.wait_torrent("uploads", Duration::from_secs(60), |t| {
        t["chunks_uploaded"] == t["chunks_total"]
    });
    assert!(bae.ok(&["verify", NAME]).contains("0 missing"));

    let catalog = bae::catalog::Catalog::open(&bae.home.join("bae.db")).unwrap();
    let t = catalog.find(NAME).unwrap();
    let chunks = catalog.chunks(t.id).unwrap();
    let object = |i: usize| {
        let oid = chunks[i].object_id.as_deref().unwrap();
        bae.home
            .join("remote")
            .join(bae::remote::object_key_for(oid))
    };
    // Chunk 1: one byte flipped in its object; chunk 3: object deleted.
    let path = object(1);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(object(3)).unwrap();
    drop(catalog);

    let out = bae.run(&["verify", NAME]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", bae.log());
    assert!(stdout.contains("bad remote chunks: 1\n"), "{stdout}");
    assert!(
        stdout.contains("chunks missing from the remote: 3\n"),
        "{stdout}"
    );
    // Local pieces are still fine.
    assert!(!stdout.contains("bad pieces"), "{stdout}");
    bae.umount();

    // Offline, the same.
    let out = bae.run(&["verify", NAME]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("bad remote chunks: 1\n"), "{stdout}");
}

/// Torrents added by magnet keep the metadata libtorrent got from peers; verify checks
/// their pieces with it (v1 for hybrids; a v2-only torrent's metadata may lack piece
/// layers, and then its chunks are checked by their recorded hashes instead).
#[test]
fn verify_checks_torrents_downloaded_from_a_magnet_link() {
    for mode in ["hybrid", "v2"] {
        let dir = tempfile::tempdir().unwrap();
        let album = album(&dir.path().join("seed"), 17);
        let torrent = dir.path().join("album.torrent");
        let (_, magnet) = python_torrent(&album, &torrent, PIECE_LEN, mode);
        let seeder = common::swarm::PyPeer::seed(&torrent, album.parent().unwrap());
        let bae = Bae::new();
        bae.mount();
        bae.ok(&[
            "add",
            &magnet,
            "--peer",
            &seeder.addr().to_string(),
            "--wait",
        ]);
        let v = bae.ok(&["verify", NAME]);
        assert!(!v.contains("problem"), "{mode}: {v}");
        assert!(!v.contains(" 0 of "), "{mode}: no piece was checked: {v}");
        bae.umount();
    }
}
