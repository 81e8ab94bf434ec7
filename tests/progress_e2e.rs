//! Progress bars of the real binary, seen as a user sees them: under a pseudo-terminal
//! (`script`) `bae import` and `bae verify` draw a bar on stderr whose last count is the
//! whole of the work (every byte stored, every check done), with the daemon (its
//! progress lines on the control socket) and without; with no terminal, with
//! `--no-progress` or on a dumb terminal no escape codes are written and stdout is
//! exactly the same; a failure still ends with its error line and a non-zero exit.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::bae::Bae;
use common::swarm::make_album;

const NAME: &str = "Progress Artist - Progress Album";
const ALBUM: &[(&str, usize)] = &[
    ("01 - One.flac", 1_500_000),
    ("02 - Two.flac", 900_001),
    ("cover.jpg", 120_000),
];

fn album_bytes() -> u64 {
    ALBUM.iter().map(|(_, n)| *n as u64).sum()
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `bae ARGS` on a pseudo-terminal (stdout and stderr both on it) with `env`;
/// returns the exit code and everything it wrote.
fn on_pty(bae: &Bae, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    on_pty_in(&bae.home, args, env)
}

/// [`on_pty`] for the library at `home`.
fn on_pty_in(home: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut c = Command::new("script");
    c.args(["-qfec", &pty_line(args), "/dev/null"])
        .env("BAE_HOME", home)
        .env("AWS_ACCESS_KEY_ID", common::s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::s3::SECRET_KEY)
        .env("TERM", "xterm")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("script (bsdutils) is installed");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The shell line `script` runs for `bae ARGS`.
fn pty_line(args: &[&str]) -> String {
    let mut line = quote(env!("CARGO_BIN_EXE_bae"));
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    // A size, as a real terminal has (a pty made by `script` without one has none).
    format!("stty rows 40 cols 160; exec {line}")
}

/// `bae ARGS` started on a pseudo-terminal in the background, all it writes going to
/// `out`; killed with its `script` if the test ends first.
fn spawn_on_pty(home: &Path, args: &[&str], out: &Path) -> Reap {
    let child = Command::new("script")
        .args(["-qfec", &pty_line(args), "/dev/null"])
        .env("BAE_HOME", home)
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .spawn()
        .unwrap();
    Reap(child)
}

/// The text with escape sequences (CSI) removed.
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The last "DONE/TOTAL UNIT" count drawn, e.g. `(163, 163)` for "163/163 checks".
fn last_count(output: &str, unit: &str) -> Option<(u64, u64)> {
    let text = strip_escapes(output);
    let marker = format!(" {unit} ");
    let num = |s: &str| s.replace(',', "").parse::<u64>().ok();
    text.match_indices(&marker)
        .filter_map(|(at, _)| {
            let word = text[..at].rsplit(' ').next()?;
            let (done, total) = word.split_once('/')?;
            Some((num(done)?, num(total)?))
        })
        .last()
}

/// "P of M pieces checked locally, ...; C chunks checked" from verify's summary: P + C.
fn checks_in_summary(stdout: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.contains("pieces checked locally"))
        .unwrap_or_else(|| panic!("no summary in {stdout:?}"));
    let (_, rest) = line.split_once(": ").unwrap();
    let pieces: u64 = rest.split(' ').next().unwrap().parse().unwrap();
    let (_, chunks) = rest.split_once("; ").unwrap();
    let chunks: u64 = chunks.split(' ').next().unwrap().parse().unwrap();
    pieces + chunks
}

fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Imports and verifies on a terminal; asserts both bars ended at their totals and
/// returns verify's stdout lines as printed on the terminal.
fn import_and_verify_on_pty(bae: &Bae, album: &Path) -> String {
    let (code, out) = on_pty(bae, &["import", album.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{out}");
    let whole = format!("{}/{}", bytes(album_bytes()), bytes(album_bytes()));
    let last = strip_escapes(&out);
    let drawn = last
        .rfind("importing ")
        .map(|i| &last[i..])
        .unwrap_or_else(|| panic!("no import bar in {out:?}"));
    assert!(
        drawn.contains(&whole),
        "{whole} not the last count: {out:?}"
    );
    assert!(out.contains(&format!("imported {NAME} (")), "{out:?}");

    let (code, out) = on_pty(bae, &["verify", NAME], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains('\x1b'), "no bar drawn on a terminal: {out:?}");
    let (done, total) = last_count(&out, "checks").unwrap_or_else(|| panic!("{out:?}"));
    let stdout = strip_escapes(&out);
    assert_eq!(
        (done, total),
        (checks_in_summary(&stdout), total),
        "{out:?}"
    );
    assert_eq!(done, total, "{out:?}");
    stdout
}

#[test]
fn bars_reach_the_total_offline_and_through_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let album = make_album(dir.path(), NAME, ALBUM, 5);

    // Offline: the command does the work and counts it itself.
    let bae = Bae::new();
    import_and_verify_on_pty(&bae, &album);

    // Through the daemon: the counts are its progress lines. Once everything is
    // uploaded, verify also checks every remote chunk, and the count includes them.
    let bae = Bae::new();
    bae.mount();
    import_and_verify_on_pty(&bae, &album);
    bae.wait_torrent("uploads", std::time::Duration::from_secs(60), |t| {
        t["chunks_uploaded"] == t["chunks_total"]
    });
    let (code, out) = on_pty(&bae, &["verify", NAME], &[]);
    assert_eq!(code, Some(0), "{out}");
    let (done, total) = last_count(&out, "checks").unwrap();
    let stdout = strip_escapes(&out);
    let remote_chunks = album_bytes().div_ceil(1 << 20);
    assert!(
        stdout.contains(&format!(
            "; {remote_chunks} chunks checked, {remote_chunks} ok"
        )),
        "{stdout}"
    );
    assert_eq!((done, total), (checks_in_summary(&stdout), done), "{out:?}");
}

#[test]
fn without_a_terminal_nothing_is_drawn_and_stdout_is_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let album = make_album(dir.path(), NAME, ALBUM, 6);
    let bae = Bae::new();

    // Pipes: no escape codes, no carriage returns, no progress lines on stderr.
    let out = bae.run(&["import", album.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "{stderr:?}"
    );
    assert!(!stderr.contains("importing"), "{stderr:?}");
    let out = bae.run(&["verify", NAME]);
    assert!(out.status.success());
    let piped = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr, "", "stderr of a piped verify");
    assert_eq!(piped.lines().count(), 1, "{piped}");
    assert!(piped.starts_with(&format!("{NAME}: ")), "{piped}");

    // On a terminal with --no-progress, or one that cannot redraw: what is written is
    // stdout as piped (plus, on a dumb terminal, a few plain progress lines).
    let (code, out) = on_pty(&bae, &["verify", NAME, "--no-progress"], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        out.replace("\r\n", "\n"),
        piped,
        "--no-progress on a terminal"
    );
    let (code, out) = on_pty(&bae, &["--no-progress", "verify", NAME], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.replace("\r\n", "\n"), piped, "global --no-progress");

    let (code, out) = on_pty(&bae, &["verify", NAME], &[("TERM", "dumb")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        !out.contains('\x1b'),
        "escape codes on a dumb terminal: {out:?}"
    );
    let out = out.replace("\r\n", "\n");
    let (progress, rest): (Vec<&str>, Vec<&str>) =
        out.lines().partition(|l| l.starts_with("verifying "));
    assert_eq!(rest.join("\n") + "\n", piped);
    let checks = checks_in_summary(&piped);
    assert_eq!(
        progress.last().copied(),
        Some(format!("verifying {NAME}: {checks}/{checks} checks (100%)").as_str()),
        "{out}"
    );
    assert!(progress.len() <= 11, "one line per tenth at most: {out}");

    // Hashing a new album counts its pieces, up to all of them.
    let other = tempfile::tempdir().unwrap();
    let album = make_album(other.path(), "Hashed Album", ALBUM, 11);
    let (code, out) = on_pty(
        &bae,
        &["import", album.to_str().unwrap()],
        &[("TERM", "dumb")],
    );
    assert_eq!(code, Some(0), "{out}");
    let last = out
        .replace("\r\n", "\n")
        .lines()
        .rfind(|l| l.starts_with("hashing "))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no hashing progress: {out:?}"));
    let (done, total) = last_count(&last, "pieces").unwrap_or_else(|| panic!("{last}"));
    assert!(total > 0 && done == total, "{last}");

    // NO_COLOR: a bar still, without colours.
    let (code, out) = on_pty(&bae, &["verify", NAME], &[("NO_COLOR", "1")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("verifying "), "{out:?}");
    assert!(
        !out.contains("\x1b[36m"),
        "colour despite NO_COLOR: {out:?}"
    );
}

#[test]
fn a_failure_after_a_bar_still_ends_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let album = make_album(dir.path(), NAME, ALBUM, 7);
    let bae = Bae::new();
    bae.ok(&["import", album.to_str().unwrap()]);
    // One local chunk file damaged (its length kept).
    let cache = std::fs::read_dir(bae.home.join("cache"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let chunk = cache.join("0");
    let mut data = std::fs::read(&chunk).unwrap();
    let n = data.len();
    data[n / 2] ^= 0xff;
    std::fs::write(&chunk, data).unwrap();

    let (code, out) = on_pty(&bae, &["verify", NAME], &[]);
    assert_eq!(code, Some(1), "{out}");
    let text = strip_escapes(&out);
    let (done, total) = last_count(&out, "checks").unwrap();
    assert_eq!(done, total, "{out:?}");
    let last = text.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with(&format!("bae: {NAME} failed verification")),
        "{out:?}"
    );
}

#[test]
fn restore_and_purge_count_torrents_and_objects() {
    let s3dir = tempfile::tempdir().unwrap();
    let server = common::s3::S3Server::start(s3dir.path());
    let dir = tempfile::tempdir().unwrap();
    let album = make_album(dir.path(), NAME, ALBUM, 8);
    let first = Bae::with_s3(&server.endpoint(), common::s3::BUCKET, &[]);
    first.mount();
    first.ok(&["import", album.to_str().unwrap()]);
    first.wait_torrent("uploads", std::time::Duration::from_secs(60), |t| {
        t["chunks_uploaded"] == t["chunks_total"]
    });
    first.umount();

    // A new machine: the restore counts the torrents it reads back.
    let home = dir.path().join("second");
    let key = first.home.join("key");
    let remote = format!("s3://{}/lib", common::s3::BUCKET);
    let args = [
        "init",
        "--restore",
        "--key",
        key.to_str().unwrap(),
        "--remote",
        &remote,
        "--endpoint",
        &server.endpoint(),
    ];
    let (code, out) = on_pty_in(&home, &args, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(last_count(&out, "torrents"), Some((1, 1)), "{out:?}");
    assert!(
        out.contains("restored 1 torrents from the remote"),
        "{out:?}"
    );

    // --purge counts the chunk objects it deletes: every uploaded chunk.
    let chunks = album_bytes().div_ceil(1 << 20);
    let (code, out) = on_pty(&first, &["remove", NAME, "--purge"], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        last_count(&out, "objects"),
        Some((chunks, chunks)),
        "{out:?}"
    );
    assert!(
        out.contains(&format!("{NAME} removed, with its {chunks} objects")),
        "{out:?}"
    );
}

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills the `script` process (and so its pty) if the test fails before it ends.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        for c in children(self.0.id()) {
            // SAFETY: kill(2) on a process this test started (script's child).
            unsafe { libc::kill(c as i32, libc::SIGKILL) };
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ctrl_c_clears_the_bar_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    // Sparse: hashing it takes long enough to be interrupted, and costs no disk.
    let album = dir.path().join("Big Album");
    std::fs::create_dir(&album).unwrap();
    let f = std::fs::File::create(album.join("big.flac")).unwrap();
    f.set_len(64 << 30).unwrap();
    drop(f);
    let bae = Bae::new();
    let out_path = dir.path().join("pty.out");
    let mut script = spawn_on_pty(&bae.home, &["import", album.to_str().unwrap()], &out_path);
    // Once the spinner is drawn, Ctrl-C (SIGINT, as the terminal sends it) to bae.
    let bae_pid = loop {
        let out = std::fs::read_to_string(&out_path).unwrap_or_default();
        if out.contains("hashing ") {
            let kids = children(script.0.id());
            assert_eq!(kids.len(), 1, "{kids:?}");
            break kids[0];
        }
        assert!(
            script.0.try_wait().unwrap().is_none(),
            "ended early: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // SAFETY: kill(2) on the bae process this test started.
    unsafe { libc::kill(bae_pid as i32, libc::SIGINT) };
    let status = script.0.wait().unwrap();
    let out = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(status.code(), Some(130), "{out:?}");
    // The bar's line was cleared, then the one message, on a clean line.
    assert!(
        out.ends_with("\r\x1b[2Kbae: interrupted\r\n"),
        "{:?}",
        &out[out.len().saturating_sub(300)..]
    );
    // Nothing of the import is left.
    assert_eq!(bae.status_json()["torrents"].as_array().unwrap().len(), 0);
}

#[test]
fn evict_counts_the_chunks_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let album = make_album(dir.path(), NAME, ALBUM, 9);
    let bae = Bae::new();
    bae.mount();
    bae.ok(&["import", album.to_str().unwrap()]);
    bae.wait_torrent("uploads", std::time::Duration::from_secs(60), |t| {
        t["chunks_uploaded"] == t["chunks_total"]
    });
    // Seeding without the pin: every chunk may go.
    bae.ok(&["seed", NAME, "on", "--no-pin"]);
    let (code, out) = on_pty(&bae, &["evict"], &[]);
    assert_eq!(code, Some(0), "{out}");
    let chunks = album_bytes().div_ceil(1 << 20);
    assert_eq!(
        last_count(&out, "chunks"),
        Some((chunks, chunks)),
        "{out:?}"
    );
    assert!(
        strip_escapes(&out).contains(&format!("evicted {chunks} chunks")),
        "{out:?}"
    );
    bae.umount();
}

/// `add --wait` whose torrent another shell pauses: the bar says so (and how to go on)
/// while it stands still, and the wait ends once the torrent is resumed and complete.
#[test]
fn add_wait_says_when_its_torrent_was_paused() {
    let dir = tempfile::tempdir().unwrap();
    let album = make_album(&dir.path().join("seed"), NAME, ALBUM, 11);
    let torrent = dir.path().join("album.torrent");
    common::swarm::python_torrent(&album, &torrent, 64 * 1024, "v1");
    // About 5 s for the album: room to pause it midway.
    let seeder = common::swarm::PyPeer::seed_limited(&torrent, album.parent().unwrap(), 500_000);
    let bae = Bae::new();
    bae.mount();
    let out_path = dir.path().join("pty.out");
    let peer = seeder.addr().to_string();
    let args = ["add", torrent.to_str().unwrap(), "--peer", &peer, "--wait"];
    let mut script = spawn_on_pty(&bae.home, &args, &out_path);
    let out_now = || strip_escapes(&std::fs::read_to_string(&out_path).unwrap_or_default());
    let wait_for = |what: &str, script: &mut Reap| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !out_now().contains(what) {
            assert!(
                script.0.try_wait().unwrap().is_none(),
                "ended before {what:?}: {:?}",
                out_now()
            );
            assert!(
                std::time::Instant::now() < deadline,
                "no {what:?} in {:?}",
                out_now()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_for("downloading ", &mut script);
    bae.ok(&["pause", NAME]);
    wait_for("(paused: `bae resume` goes on)", &mut script);
    let progress = bae.status_json()["torrents"][0]["progress"]
        .as_f64()
        .unwrap();
    assert!(progress < 1.0, "paused too late to tell: {progress}");
    bae.ok(&["resume", NAME]);
    let status = script.0.wait().unwrap();
    let out = out_now();
    assert_eq!(status.code(), Some(0), "{out:?}");
    // The bar drawn last is without the note, at the album's size.
    let whole = format!("{}/{}", bytes(album_bytes()), bytes(album_bytes()));
    let drawn = out
        .rfind("downloading ")
        .map(|i| &out[i..])
        .unwrap_or_else(|| panic!("no bar in {out:?}"));
    assert!(
        drawn.contains(&whole) && !drawn.contains("paused"),
        "{drawn:?} in {out:?}"
    );
    bae.umount();
}
