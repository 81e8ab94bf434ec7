//! bae fitting the system around it, through the real binary: settings from the
//! environment, the metrics endpoint during a real download, readable status, the
//! watch folder with a real peer, shell completions and the man page.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use common::bae::Bae;
use common::swarm::{make_album, python_torrent, PyPeer};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn environment_overrides_config_keys_for_commands_and_the_daemon() {
    let bae = Bae::new();
    // An offline command sees the override...
    let out = bae
        .cmd(&["status", "--json"])
        .env("BAE_CACHE_SIZE", "123MiB")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let s: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(s["cache_limit_bytes"], 123u64 << 20);
    // ...the file does not keep it...
    assert_eq!(bae.status_json()["cache_limit_bytes"], 1u64 << 30);
    // ...`bae config` shows it and says where it came from...
    let out = bae
        .cmd(&["config"])
        .env("BAE_NETWORK_UTP", "yes")
        .env("BAE_READAHEAD_CHUNKS", "3")
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.contains("readahead_chunks = 3"), "{text}");
    assert!(text.contains("utp = true"), "{text}");
    assert!(text.contains("network.utp: from BAE_NETWORK_UTP"), "{text}");
    // ...a bad value is one clear error naming the variable...
    let out = bae
        .cmd(&["status"])
        .env("BAE_NETWORK_LISTEN_PORT", "eighty")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("BAE_NETWORK_LISTEN_PORT=\"eighty\""),
        "{}",
        stderr(&out)
    );
    // ...and the background daemon gets it too.
    let port = free_port();
    let mp = bae.mountpoint.to_str().unwrap().to_owned();
    let out = bae
        .cmd(&["mount", &mp])
        .env("BAE_NETWORK_LISTEN_PORT", port.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), bae.log());
    assert_eq!(bae.status_json()["listen_port"], port);
    bae.umount();
}

/// An album of pseudo-random files and its hybrid torrent.
struct Album {
    _dir: tempfile::TempDir,
    root: PathBuf,
    torrent: PathBuf,
    size: u64,
}

fn album(mib: usize) -> Album {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("01 - One.flac", mib << 19),
        ("02 - Two.flac", mib << 19),
        ("cover.jpg", 100_000),
    ];
    let root = make_album(
        &dir.path().join("seed"),
        "Metric Artist - Numbers",
        &files,
        7,
    );
    let torrent = dir.path().join("album.torrent");
    python_torrent(&root, &torrent, 64 * 1024, "hybrid");
    let size = files.iter().map(|f| f.1 as u64).sum();
    Album {
        _dir: dir,
        root,
        torrent,
        size,
    }
}

/// One HTTP GET on 127.0.0.1:`port`; returns (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample whose name (with labels) starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}\n{body}");
    body
}

#[test]
fn metrics_move_during_a_download_and_agree_with_status() {
    let a = album(6);
    // A slow seeder, so the download is scraped while it runs.
    let seeder = PyPeer::seed_limited(&a.torrent, a.root.parent().unwrap(), 1 << 20);
    let bae = Bae::new();
    let port = free_port();
    let mp = bae.mountpoint.to_str().unwrap().to_owned();
    // The flag beats the variable: metrics are on `port`, not on the variable's.
    let out = bae
        .cmd(&["mount", &mp, "--metrics", &format!("127.0.0.1:{port}")])
        .env("BAE_METRICS_ADDR", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), bae.log());
    let first = scrape(port);
    assert_eq!(sample(&first, "bae_torrents"), Some(0.0), "{first}");
    assert!(http_get(port, "/nothing").0.contains("404"));

    bae.ok(&[
        "add",
        a.torrent.to_str().unwrap(),
        "--peer",
        &seeder.addr().to_string(),
    ]);
    // Mid-download: bytes from peers are counted and grow.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let m = scrape(port);
        let down = sample(&m, "bae_peer_download_bytes_total").unwrap_or(0.0);
        if down > 0.0 && down < a.size as f64 && seen.last() != Some(&down) {
            seen.push(down);
        }
        if seen.len() >= 2 {
            assert!(seen[1] > seen[0]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress in the metrics: {m}\n{}",
            bae.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    bae.wait_torrent("the download", Duration::from_secs(120), |t| {
        t["progress"] == 1.0
    });
    // Reading a file through the mount shows in the FUSE read metrics.
    let mounted = bae
        .mountpoint
        .join("Metric Artist - Numbers")
        .join("cover.jpg");
    assert_eq!(
        std::fs::read(&mounted).unwrap(),
        std::fs::read(a.root.join("cover.jpg")).unwrap()
    );
    bae.wait_torrent("uploads", Duration::from_secs(60), |t| {
        t["chunks_uploaded"] == t["chunks_total"]
    });
    let m = scrape(port);
    let s = bae.status_json();
    let t = &s["torrents"][0];
    let total = t["chunks_total"].as_f64().unwrap();
    assert!(total > 0.0);
    let label = |state: &str| {
        format!(
            "bae_torrent_chunks{{torrent=\"Metric Artist - Numbers\",info_hash=\"{}\",state=\"{state}\"}}",
            t["info_hash"].as_str().unwrap()
        )
    };
    assert_eq!(sample(&m, &label("total")), Some(total), "{m}");
    assert_eq!(sample(&m, &label("uploaded")), Some(total), "{m}");
    assert_eq!(
        sample(&m, &label("local")),
        t["chunks_local"].as_f64(),
        "{m}"
    );
    assert_eq!(
        sample(&m, "bae_cache_limit_bytes"),
        s["cache_limit_bytes"].as_f64()
    );
    assert_eq!(
        sample(&m, "bae_cache_used_bytes"),
        s["cache"]["used_bytes"].as_f64(),
        "{m}"
    );
    assert_eq!(sample(&m, "bae_torrent_progress_ratio"), Some(1.0));
    let down = sample(&m, "bae_peer_download_bytes_total").unwrap();
    assert!(down >= a.size as f64, "{down} < {}", a.size);
    assert_eq!(
        t["peer_downloaded_bytes"].as_f64(),
        Some(down),
        "status and metrics differ"
    );
    // Its only peer was a seeder: nothing went up to peers (libtorrent's own hash checks
    // read every piece back, and are not counted as sent).
    let up = sample(&m, "bae_peer_upload_bytes_total").unwrap();
    assert!(
        up < a.size as f64 / 10.0,
        "{up} bytes counted as sent to peers"
    );
    assert!(
        sample(&m, "bae_fuse_read_seconds_count").unwrap() > 0.0,
        "{m}"
    );
    assert!(
        sample(&m, "bae_fuse_read_bytes_total").unwrap() >= 100_000.0,
        "{m}"
    );
    // Every chunk went up through the remote layer, timed per request.
    assert!(
        sample(&m, "bae_remote_request_seconds_count{op=\"put\"}").unwrap() >= total,
        "{m}"
    );
    assert_eq!(sample(&m, "bae_uploads_queued"), Some(0.0));
    bae.umount();
}

#[test]
fn metrics_refuse_a_non_loopback_address_unless_allowed() {
    let bae = Bae::new();
    let mp = bae.mountpoint.to_str().unwrap().to_owned();
    let port = free_port();
    let err = bae.fails(&["mount", &mp, "--metrics", &format!("0.0.0.0:{port}")]);
    assert!(err.contains("not a loopback address"), "{err}");
    assert_eq!(
        bae.status_json()["daemon_running"],
        false,
        "the refused daemon runs"
    );
    bae.ok(&[
        "mount",
        &mp,
        "--metrics",
        &format!("0.0.0.0:{port}"),
        "--metrics-allow-remote",
    ]);
    assert!(scrape(port).contains("bae_cache_limit_bytes"));
    bae.umount();
}

#[test]
fn status_shows_eta_and_cache_and_watch_repeats_plain_blocks_off_a_terminal() {
    let bae = Bae::new();
    let text = bae.ok(&["status"]);
    assert!(text.contains("ETA"), "{text}");
    assert!(
        text.contains("pinned") && text.contains("evictable"),
        "{text}"
    );
    // Not a terminal: no escape sequences, one block per refresh.
    let mut child = bae
        .cmd(&["status", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("cache:").count() < 2 {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "status --watch ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !seen.contains('\x1b'),
        "escape sequences off a terminal: {seen:?}"
    );
    assert!(seen.contains("\n\ndaemon:"), "blocks not separated: {seen}");
}

#[test]
fn bash_completion_offers_subcommands_and_the_man_page_is_valid_roff() {
    let bae = Bae::new();
    let script = bae.ok(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bae.bash");
    std::fs::write(&path, script).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(bae mo); COMP_CWORD=1; COMP_LINE='bae mo'; COMP_POINT=6; _bae bae mo bae; echo \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .unwrap();
    let offered = stdout(&out);
    assert!(
        offered.split_whitespace().any(|w| w == "mount"),
        "{offered}{}",
        stderr(&out)
    );
    assert!(
        !offered.split_whitespace().any(|w| w == "umount"),
        "{offered}"
    );
    for shell in ["zsh", "fish"] {
        assert!(bae.ok(&["completions", shell]).contains("mount"));
    }
    let man = bae.ok(&["man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
    let mut groff = std::process::Command::new("groff")
        .args(["-k", "-man", "-Tutf8", "-ww"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("groff is installed by scripts/install-deps");
    groff
        .stdin
        .take()
        .unwrap()
        .write_all(man.as_bytes())
        .unwrap();
    let out = groff.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "groff warnings");
    let page = stdout(&out);
    assert!(
        page.contains("bae-mount") && page.contains("Examples"),
        "{page}"
    );
    // --help reads like the page: examples included.
    assert!(bae.ok(&["--help"]).contains("bae mount ~/Music/bae"));
}

/// Polls until `path` exists.
fn wait_for_file(path: &std::path::Path, bae: &Bae) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared\n{}",
            path.display(),
            bae.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn files_dropped_in_the_watch_folder_are_added_or_set_aside_with_the_reason() {
    let tracker = PyPeer::tracker();
    let dir = tempfile::tempdir().unwrap();
    let root = make_album(
        &dir.path().join("seed"),
        "Watched Album",
        &[("a.flac", 900_000), ("b.flac", 700_000)],
        3,
    );
    let torrent = dir.path().join("watched.torrent");
    common::swarm::python_torrent_with_tracker(
        &root,
        &torrent,
        64 * 1024,
        "hybrid",
        Some(&tracker.announce_url()),
    );
    let _seeder = PyPeer::seed(&torrent, root.parent().unwrap());
    let other = make_album(
        &dir.path().join("other"),
        "Magnet Album",
        &[("c.flac", 300_000)],
        4,
    );
    let (_, other_magnet) =
        python_torrent(&other, &dir.path().join("other.torrent"), 64 * 1024, "v1");

    let bae = Bae::new();
    let watch = dir.path().join("watch");
    std::fs::create_dir_all(&watch).unwrap();
    let mp = bae.mountpoint.to_str().unwrap().to_owned();
    let out = bae
        .cmd(&["mount", &mp])
        .env("BAE_WATCH_DIR", &watch)
        .env("BAE_WATCH_INTERVAL_SECS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), bae.log());

    std::fs::copy(&torrent, watch.join("watched.torrent")).unwrap();
    std::fs::write(watch.join("other.magnet"), format!("{other_magnet}\n")).unwrap();
    std::fs::write(watch.join("broken.torrent"), b"d4:infoi3ee").unwrap();
    std::fs::write(watch.join("notes.txt"), b"not for bae").unwrap();

    wait_for_file(&watch.join("added/watched.torrent"), &bae);
    wait_for_file(&watch.join("added/other.magnet"), &bae);
    wait_for_file(&watch.join("failed/broken.torrent.error"), &bae);
    let reason = std::fs::read_to_string(watch.join("failed/broken.torrent.error")).unwrap();
    assert!(reason.contains("not a valid torrent"), "{reason}");
    assert!(watch.join("failed/broken.torrent").exists());
    assert!(
        watch.join("notes.txt").exists(),
        "other files are left alone"
    );

    // The dropped torrent downloads from the seeder found through the tracker.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = bae.status_json();
        let names: Vec<&str> = s["torrents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"Magnet Album"), "{s:#}");
        let t = s["torrents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "Watched Album")
            .cloned();
        if t.as_ref().is_some_and(|t| t["progress"] == 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not downloaded: {s:#}\n{}",
            bae.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = std::fs::read(bae.mountpoint.join("Watched Album/a.flac")).unwrap();
    assert!(got == std::fs::read(root.join("a.flac")).unwrap());
    bae.umount();
}
