//! The product as a user meets it: the real `bae` binary, a real kernel FUSE mount,
//! a third-party BitTorrent seeder (python3-libtorrent) and, where it matters, a real S3
//! server — all on 127.0.0.1.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::bae::{assert_same_files, file_names, make_flac_album, Bae};
use common::swarm::{python_torrent, PyPeer};

struct Fixture {
    _dir: tempfile::TempDir,
    album: PathBuf,
    torrent: PathBuf,
    name: String,
}

fn fixture(piece_len: u64, seconds: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let name = "Test Artist - Tones (2026)".to_string();
    let album = make_flac_album(&dir.path().join("seed"), &name, seconds, 3);
    let torrent = dir.path().join("album.torrent");
    python_torrent(&album, &torrent, piece_len, "hybrid");
    Fixture {
        _dir: dir,
        album,
        torrent,
        name,
    }
}

fn mounted_album(bae: &Bae, f: &Fixture) -> PathBuf {
    bae.mountpoint.join(&f.name)
}

#[test]
fn tree_names_and_sizes_are_right_before_any_data() {
    let f = fixture(256 * 1024, 4);
    let bae = Bae::new();
    // Shorten the wait so an unavailable read fails fast.
    std::fs::write(
        bae.home.join("config.toml"),
        std::fs::read_to_string(bae.home.join("config.toml"))
            .unwrap()
            .replace("read_timeout_secs = 60", "read_timeout_secs = 2"),
    )
    .unwrap();
    bae.ok(&["add", f.torrent.to_str().unwrap()]);
    bae.mount();
    let mounted = mounted_album(&bae, &f);
    let mut names: Vec<PathBuf> = file_names(&mounted);
    names.sort();
    assert_eq!(names, file_names(&f.album), "same names in the mount");
    for rel in file_names(&f.album) {
        let want = std::fs::metadata(f.album.join(&rel)).unwrap().len();
        let got = std::fs::metadata(mounted.join(&rel)).unwrap().len();
        assert_eq!(want, got, "size of {}", rel.display());
    }
    // Nothing downloaded and no peer: a read waits, then fails with EIO.
    let err = std::fs::read(mounted.join("01 - Tone 1.flac")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    bae.umount();
}

#[test]
fn downloaded_album_reads_back_exactly_and_decodes() {
    let f = fixture(256 * 1024, 6);
    let seeder = PyPeer::seed(&f.torrent, f.album.parent().unwrap());
    let bae = Bae::new();
    bae.mount();
    bae.add_from(&f.torrent, seeder.addr());
    let mounted = mounted_album(&bae, &f);
    assert_same_files(&f.album, &mounted);
    let flacs: Vec<PathBuf> = file_names(&mounted)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "flac"))
        .map(|p| mounted.join(p))
        .collect();
    let st = Command::new("flac")
        .arg("-t")
        .arg("-s")
        .args(&flacs)
        .status()
        .unwrap();
    assert!(st.success(), "flac -t failed on the mounted tracks");
    // That the bytes live nowhere but in the chunk cache: torrent_e2e.rs.
    // Read-only: every kind of change is refused with EROFS.
    let erofs =
        |r: std::io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    erofs(std::fs::write(mounted.join("new.txt"), b"x"));
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(mounted.join("album.cue"))
            .map(|_| ()),
    );
    erofs(std::fs::remove_file(mounted.join("album.cue")));
    erofs(std::fs::rename(
        mounted.join("album.cue"),
        mounted.join("x.cue"),
    ));
    erofs(std::fs::create_dir(mounted.join("d")));
    bae.umount();
}

#[test]
fn a_track_read_while_downloading_comes_back_correct() {
    let f = fixture(64 * 1024, 20);
    // A slow seeder: the album takes several seconds, so the read streams.
    let seeder = PyPeer::seed_limited(&f.torrent, f.album.parent().unwrap(), 512 << 10);
    let bae = Bae::new();
    bae.mount();
    bae.ok(&[
        "add",
        f.torrent.to_str().unwrap(),
        "--peer",
        &seeder.addr().to_string(),
    ]);
    let mounted = mounted_album(&bae, &f);
    // The last track, from its end: the pieces a player wants first.
    let track = "03 - Tone 3.flac";
    let orig = std::fs::read(f.album.join(track)).unwrap();
    let mut file = std::fs::File::open(mounted.join(track)).unwrap();
    let tail_at = orig.len() as u64 - 100_000;
    file.seek(SeekFrom::Start(tail_at)).unwrap();
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).unwrap();
    assert!(
        tail[..] == orig[tail_at as usize..],
        "tail of the track differs"
    );
    // It streamed: the bytes came before the rest of the album did.
    let progress = bae.status_json()["torrents"][0]["progress"]
        .as_f64()
        .unwrap();
    assert!(
        progress < 1.0,
        "the read only returned once everything was downloaded"
    );
    let mut all = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut all).unwrap();
    assert!(all == orig, "streamed track differs");
    drop(file);
    bae.umount();
}

#[test]
fn after_the_cache_is_emptied_reads_come_back_from_the_remote() {
    let f = fixture(256 * 1024, 8);
    let seeder = PyPeer::seed(&f.torrent, f.album.parent().unwrap());
    let bae = Bae::new();
    bae.mount();
    bae.add_from(&f.torrent, seeder.addr());
    drop(seeder);
    bae.empty_cache("Test Artist");
    let mounted = mounted_album(&bae, &f);

    // 8 concurrent readers at random offsets, all through the remote at first.
    let files = file_names(&f.album);
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let rel = files[i as usize % files.len()].clone();
            let orig = std::fs::read(f.album.join(&rel)).unwrap();
            let path = mounted.join(&rel);
            std::thread::spawn(move || {
                let mut rng = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut file = std::fs::File::open(&path).unwrap();
                for _ in 0..40 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let off = rng % orig.len() as u64;
                    let len = ((rng >> 20) % 300_000).min(orig.len() as u64 - off) as usize;
                    let mut buf = vec![0u8; len];
                    file.seek(SeekFrom::Start(off)).unwrap();
                    file.read_exact(&mut buf).unwrap();
                    assert!(
                        buf[..] == orig[off as usize..off as usize + len],
                        "{} at {off}",
                        path.display()
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_same_files(&f.album, &mounted);
    assert!(bae.ok(&["verify", "Test Artist"]).contains("ok"));
    bae.umount();
}

#[test]
fn umount_with_an_open_file_is_refused_then_lazy_works() {
    let f = fixture(256 * 1024, 2);
    let bae = Bae::new();
    bae.ok(&["add", f.torrent.to_str().unwrap()]);
    bae.mount();
    let mp = bae.mountpoint.to_str().unwrap().to_owned();
    let open = std::fs::File::open(mounted_album(&bae, &f).join("album.cue")).unwrap();
    let err = bae.fails(&["umount", &mp]);
    assert!(err.contains("busy") && err.contains("--lazy"), "{err}");
    assert!(
        bae.status_json()["daemon_running"] == true,
        "the mount stays up"
    );
    drop(open);
    bae.umount();
    assert!(!std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .contains(&mp));
    // A missing mount point is a clear error and starts nothing.
    let err = bae.fails(&["mount", "/nonexistent/bae-mnt"]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(bae.daemon_pid().is_none());
}

#[test]
fn bad_input_gets_one_clear_error_and_changes_nothing() {
    let bae = Bae::new();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.torrent");
    std::fs::write(&junk, b"d4:infoi3ee").unwrap();
    let err = bae.fails(&["add", junk.to_str().unwrap()]);
    assert!(err.contains("not a valid torrent"), "{err}");
    let err = bae.fails(&["add", "magnet:?xt=urn:btih:nothex"]);
    assert!(err.contains("magnet"), "{err}");
    let err = bae.fails(&["add", "/nonexistent.torrent"]);
    assert!(err.contains("cannot read"), "{err}");
    let err = bae.fails(&["seed", "nothing", "on"]);
    assert!(err.contains("no torrent matches"), "{err}");
    let s = bae.status_json();
    assert_eq!(s["torrents"].as_array().unwrap().len(), 0);
}

#[test]
fn with_the_remote_down_cached_reads_work_and_uncached_reads_fail_with_eio() {
    let s3dir = tempfile::tempdir().unwrap();
    let mut server = common::s3::S3Server::start(s3dir.path());
    let f = fixture(256 * 1024, 8);
    let seeder = PyPeer::seed(&f.torrent, f.album.parent().unwrap());
    let bae = Bae::with_s3(
        &server.endpoint(),
        common::s3::BUCKET,
        &[("read_timeout_secs", "4")],
    );
    bae.mount();
    bae.add_from(&f.torrent, seeder.addr());
    drop(seeder);
    bae.empty_cache("Test Artist");
    let mounted = mounted_album(&bae, &f);
    let one = "01 - Tone 1.flac";
    let three = "03 - Tone 3.flac";
    assert!(std::fs::read(mounted.join(one)).unwrap() == std::fs::read(f.album.join(one)).unwrap());

    server.stop();
    // Cached: still served.
    assert!(std::fs::read(mounted.join(one)).unwrap() == std::fs::read(f.album.join(one)).unwrap());
    // Not cached: the read waits (bounded), then fails with EIO.
    let err = std::fs::read(mounted.join(three)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));

    server.restart();
    let want = std::fs::read(f.album.join(three)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match std::fs::read(mounted.join(three)) {
            Ok(got) => {
                assert!(got == want, "track 3 differs after the remote came back");
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "remote never came back: {e}"
            ),
        }
    }
    bae.umount();
}

#[test]
fn mount_flags_status_watch_and_stale_mount_cleanup() {
    let bae = Bae::new();
    let port = {
        // A free port for --listen.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mp = bae.mountpoint.to_str().unwrap().to_owned();
    bae.ok(&[
        "mount",
        &mp,
        "--listen",
        &port.to_string(),
        "--cache-size",
        "3MiB",
    ]);
    let s = bae.status_json();
    assert_eq!(s["listen_port"], port, "{s:#}");
    assert_eq!(s["cache_limit_bytes"], 3 << 20, "{s:#}");
    // A second mount of the same library is refused.
    let err = bae.fails(&["mount", &mp]);
    assert!(err.contains("already mounted"), "{err}");

    // status --watch redraws until stopped.
    let mut watch = bae
        .cmd(&["status", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    watch.kill().unwrap();
    let out = watch.wait_with_output().unwrap();
    let frames = String::from_utf8_lossy(&out.stdout)
        .matches("daemon: running")
        .count();
    assert!(frames >= 2, "status --watch drew {frames} frames");

    // A crashed daemon leaves a stale mount; `bae umount` removes it.
    bae.kill9();
    assert!(std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .contains(&mp));
    let out = bae.ok(&["umount", &mp]);
    assert!(out.contains("stale"), "{out}");
    assert!(!std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .contains(&mp));
}
