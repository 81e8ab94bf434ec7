//! libtorrent through bae's chunk store, end to end with the real binary: third-party
//! clients download from bae (from the cache, and with every chunk coming back from the
//! remote), magnet links, corrupt peers, import, restore and stopping by signal. A `kill -9`
//! in the middle of a download: torrent_e2e.rs.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::bae::{assert_same_files, make_flac_album, Bae};
use common::swarm::{python_torrent, PyPeer};

struct Album {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    torrent: PathBuf,
    magnet: String,
}

fn album(piece_len: u64, seconds: u32, mode: &str) -> Album {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_flac_album(&tmp.path().join("seed"), "Seeded Album", seconds, 3);
    let torrent = tmp.path().join("album.torrent");
    let (_, magnet) = python_torrent(&dir, &torrent, piece_len, mode);
    Album {
        _dir: tmp,
        dir,
        torrent,
        magnet,
    }
}

fn bae_port(bae: &Bae) -> u16 {
    bae.status_json()["listen_port"].as_u64().unwrap() as u16
}

/// bae downloads from a python seeder, then python leechers download from bae: once
/// from the cache, once with the cache emptied so every chunk comes from the remote.
#[test]
fn third_party_clients_download_from_bae_cached_and_from_the_remote() {
    let a = album(256 * 1024, 8, "hybrid");
    let bae = Bae::new();
    bae.mount();
    {
        let seeder = PyPeer::seed(&a.torrent, a.dir.parent().unwrap());
        bae.add_from(&a.torrent, seeder.addr());
    }
    let from = std::net::SocketAddr::from(([127, 0, 0, 1], bae_port(&bae)));

    let got1 = tempfile::tempdir().unwrap();
    let mut leecher = PyPeer::leech(&a.torrent, got1.path(), from);
    leecher.wait_line("DONE");
    assert_same_files(&a.dir, &got1.path().join("Seeded Album"));

    bae.empty_cache("Seeded Album");
    let got2 = tempfile::tempdir().unwrap();
    let mut leecher = PyPeer::leech(&a.torrent, got2.path(), from);
    leecher.wait_line("DONE");
    assert_same_files(&a.dir, &got2.path().join("Seeded Album"));
    bae.umount();
}

#[test]
fn a_magnet_link_gets_its_metadata_from_peers() {
    let a = album(64 * 1024, 4, "v1");
    let seeder = PyPeer::seed(&a.torrent, a.dir.parent().unwrap());
    let bae = Bae::new();
    bae.mount();
    bae.ok(&[
        "add",
        &a.magnet,
        "--peer",
        &seeder.addr().to_string(),
        "--wait",
    ]);
    let s = bae.status_json();
    assert_eq!(s["torrents"][0]["name"], "Seeded Album", "{s:#}");
    assert_same_files(&a.dir, &bae.mountpoint.join("Seeded Album"));
    // Metadata is kept: after a restart the torrent is there without any peer.
    bae.umount();
    drop(seeder);
    bae.mount();
    assert_same_files(&a.dir, &bae.mountpoint.join("Seeded Album"));
    bae.umount();
}

#[test]
fn v2_only_torrent_with_a_non_power_of_two_piece_size() {
    // 48 KiB pieces are not a power of two; v2-only torrents align files to pieces.
    for (piece, mode) in [(48 * 1024, "v1pad"), (4 << 20, "v2")] {
        let a = album(piece, 5, mode);
        let seeder = PyPeer::seed(&a.torrent, a.dir.parent().unwrap());
        let bae = Bae::new();
        bae.mount();
        bae.add_from(&a.torrent, seeder.addr());
        assert_same_files(&a.dir, &bae.mountpoint.join("Seeded Album"));
        bae.umount();
    }
}

#[test]
fn a_corrupt_peer_does_not_corrupt_the_store() {
    let a = album(64 * 1024, 6, "v1");
    let liar = PyPeer::corrupt_seeder(&a.torrent);
    let good = PyPeer::seed_limited(&a.torrent, a.dir.parent().unwrap(), 2 << 20);
    let bae = Bae::new();
    bae.mount();
    bae.ok(&[
        "add",
        a.torrent.to_str().unwrap(),
        "--peer",
        &liar.addr().to_string(),
        "--peer",
        &good.addr().to_string(),
        "--wait",
    ]);
    assert_same_files(&a.dir, &bae.mountpoint.join("Seeded Album"));
    assert!(bae.ok(&["verify", "Seeded Album"]).contains("ok"));
    bae.umount();
}

#[test]
fn import_a_folder_then_a_third_party_client_downloads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_flac_album(tmp.path(), "Imported Album", 5, 2);
    let torrent = tmp.path().join("imported.torrent");
    let bae = Bae::new();
    let out = bae.ok(&[
        "import",
        dir.to_str().unwrap(),
        "--piece-size",
        "128KiB",
        "--out",
        torrent.to_str().unwrap(),
    ]);
    assert!(out.contains("imported Imported Album"), "{out}");
    // Importing the same album as the same torrent again is refused and changes nothing.
    let err = bae.fails(&["import", dir.to_str().unwrap(), "--piece-size", "128KiB"]);
    assert!(err.contains("already in the library"), "{err}");
    bae.mount();
    assert_same_files(&dir, &bae.mountpoint.join("Imported Album"));
    let from = std::net::SocketAddr::from(([127, 0, 0, 1], bae_port(&bae)));
    let got = tempfile::tempdir().unwrap();
    let mut leecher = PyPeer::leech(&torrent, got.path(), from);
    leecher.wait_line("DONE");
    assert_same_files(&dir, &got.path().join("Imported Album"));
    bae.umount();
}

#[test]
fn a_new_machine_restores_the_library_from_the_remote() {
    let s3dir = tempfile::tempdir().unwrap();
    let server = common::s3::S3Server::start(s3dir.path());
    let a = album(256 * 1024, 6, "hybrid");
    let seeder = PyPeer::seed(&a.torrent, a.dir.parent().unwrap());
    let first = Bae::with_s3(&server.endpoint(), common::s3::BUCKET, &[]);
    first.mount();
    first.add_from(&a.torrent, seeder.addr());
    first.wait_torrent("uploads", Duration::from_secs(60), |t| {
        t["chunks_uploaded"] == t["chunks_total"]
    });
    // A clean stop uploads the catalog snapshot.
    first.umount();
    drop(seeder);

    let second = tempfile::tempdir().unwrap();
    let home = second.path().join("home");
    let mnt = second.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let endpoint = server.endpoint();
    let key = first.home.join("key");
    let remote = format!("s3://{}/lib", common::s3::BUCKET);
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bae"))
            .env("BAE_HOME", &home)
            .env("AWS_ACCESS_KEY_ID", common::s3::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", common::s3::SECRET_KEY)
            .args(args)
            .output()
            .unwrap()
    };
    // The wrong key is refused, and leaves nothing behind.
    let wrong = second.path().join("wrong.key");
    std::fs::write(&wrong, "11".repeat(32)).unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = run(&[
        "init",
        "--restore",
        "--key",
        wrong.to_str().unwrap(),
        "--remote",
        &remote,
        "--endpoint",
        &endpoint,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!home.join("config.toml").exists());

    let out = run(&[
        "init",
        "--restore",
        "--key",
        key.to_str().unwrap(),
        "--remote",
        &remote,
        "--endpoint",
        &endpoint,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Loopback-only settings for the test, then mount: every file comes from the remote.
    let cfg = std::fs::read_to_string(home.join("config.toml")).unwrap();
    let cfg = cfg
        .replace("dht = true", "dht = false")
        .replace("lsd = true", "lsd = false")
        .replace("upnp = true", "upnp = false")
        .replace("natpmp = true", "natpmp = false")
        .replace("listen_port = 6881", "listen_port = 0");
    std::fs::write(home.join("config.toml"), cfg).unwrap();
    let out = run(&["mount", mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = mnt.join("Seeded Album");
    let result = std::panic::catch_unwind(|| assert_same_files(&a.dir, &restored));
    let out = run(&["umount", mnt.to_str().unwrap()]);
    if !out.status.success() {
        let _ = std::process::Command::new("fusermount3")
            .arg("-uz")
            .arg(&mnt)
            .status();
    }
    result.unwrap();
}

#[test]
fn sigterm_unmounts_and_stops_cleanly_and_pause_remove_work() {
    let a = album(256 * 1024, 3, "hybrid");
    let bae = Bae::new();
    bae.ok(&["add", a.torrent.to_str().unwrap(), "--paused"]);
    bae.mount();
    let s = bae.status_json();
    assert_eq!(s["torrents"][0]["state"], "paused", "{s:#}");
    bae.ok(&["resume", "Seeded"]);
    bae.wait_torrent("resumed", Duration::from_secs(30), |t| {
        t["state"] != "paused"
    });
    bae.ok(&["pause", "Seeded"]);
    bae.wait_torrent("paused", Duration::from_secs(30), |t| {
        t["state"] == "paused"
    });

    let pid = bae.daemon_pid().unwrap();
    // SAFETY: kill(2) on the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(bae.mountpoint.to_str().unwrap()),
        "still mounted after SIGTERM"
    );

    bae.ok(&["remove", "Seeded", "--purge"]);
    assert_eq!(bae.status_json()["torrents"].as_array().unwrap().len(), 0);
    let err = bae.fails(&["remove", "Seeded"]);
    assert!(err.contains("no torrent matches"), "{err}");
}
