//! Running the real `bae` binary in a temporary library, like a user would, plus the
//! sample album the end-to-end tests use. The daemon and its mount are stopped by a
//! Drop guard even when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Bae {
    pub home: PathBuf,
    pub mountpoint: PathBuf,
    _dir: tempfile::TempDir,
}

impl Bae {
    /// A fresh library (local remote, loopback networking) and an empty mount point.
    pub fn new() -> Bae {
        Bae::init(&[], &[])
    }

    /// Like `new`, but the remote is the given S3 server; `extra` overrides config keys.
    pub fn with_s3(endpoint: &str, bucket: &str, extra: &[(&str, &str)]) -> Bae {
        let remote = format!("s3://{bucket}/lib");
        Bae::init(&["--remote", &remote, "--endpoint", endpoint], extra)
    }

    fn init(init_args: &[&str], extra: &[(&str, &str)]) -> Bae {
        let b = Bae::empty();
        let mut args = vec!["init", "--cache-size", "1GiB"];
        args.extend_from_slice(init_args);
        b.ok(&args);
        b.set_loopback_config(extra);
        b
    }

    /// A library rebuilt from the remote alone (`bae init --restore`) into a new home,
    /// as on a new machine, with loopback-only settings. Err: the init's stderr.
    pub fn restored(remote: &str, endpoint: &str, key: &Path) -> Result<Bae, String> {
        let b = Bae::empty();
        let out = b.run(&[
            "init",
            "--restore",
            "--key",
            key.to_str().unwrap(),
            "--remote",
            remote,
            "--endpoint",
            endpoint,
        ]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        b.set_loopback_config(&[]);
        Ok(b)
    }

    /// A copy of `src`'s library (stopped) in a new home, with `key_hex` as its key:
    /// the same catalog and remote, another key.
    pub fn copy_with_key(src: &Bae, key_hex: &str) -> Bae {
        let b = Bae::empty();
        let st = Command::new("cp")
            .arg("-a")
            .arg(&src.home)
            .arg(&b.home)
            .status()
            .unwrap();
        assert!(st.success(), "copying the library failed");
        for stale in ["daemon.pid", "control.sock", "daemon.log"] {
            let _ = std::fs::remove_file(b.home.join(stale));
        }
        let key = b.home.join("key");
        std::fs::write(&key, key_hex).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        b
    }

    /// A temporary directory with a mount point and no library yet.
    fn empty() -> Bae {
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir_all(&mountpoint).unwrap();
        Bae {
            home: dir.path().join("home"),
            mountpoint,
            _dir: dir,
        }
    }

    /// Sets config keys (`key = value` lines, top level or existing anywhere).
    pub fn configure(&self, keys: &[(&str, &str)]) {
        self.set_loopback_config(keys);
    }

    /// Loopback only: no DHT/LSD/UPnP/NAT-PMP, TCP only, any free port.
    fn set_loopback_config(&self, extra: &[(&str, &str)]) {
        let path = self.home.join("config.toml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        for (k, v) in [
            ("dht", "false"),
            ("lsd", "false"),
            ("upnp", "false"),
            ("natpmp", "false"),
            ("utp", "false"),
            ("listen_port", "0"),
            ("listen_address", "\"127.0.0.1\""),
        ]
        .iter()
        .chain(extra.iter())
        {
            let line = text
                .lines()
                .find(|l| l.split('=').next().map(str::trim) == Some(k))
                .map(str::to_owned);
            match line {
                Some(l) => text = text.replace(&l, &format!("{k} = {v}")),
                None => text = format!("{k} = {v}\n{text}"),
            }
        }
        std::fs::write(&path, text).unwrap();
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bae"));
        c.env("BAE_HOME", &self.home).args(args);
        c.env("AWS_ACCESS_KEY_ID", super::s3::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", super::s3::SECRET_KEY);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "bae {args:?} failed:\nstdout: {}\nstderr: {}\nlog: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "bae {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("daemon.log")).unwrap_or_default()
    }

    pub fn mount(&self) {
        let mp = self.mountpoint.to_str().unwrap().to_owned();
        self.ok(&["mount", &mp]);
    }

    pub fn umount(&self) {
        let mp = self.mountpoint.to_str().unwrap().to_owned();
        self.ok(&["umount", &mp]);
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// Polls `status --json` until `pred` holds for the first torrent.
    pub fn wait_torrent(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status_json();
            if let Some(t) = s["torrents"].get(0) {
                if pred(t) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:#}\nlog: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `bae add TORRENT --peer PEER --wait`: downloads the whole torrent from `peer`.
    pub fn add_from(&self, torrent: &Path, peer: std::net::SocketAddr) {
        self.ok(&[
            "add",
            torrent.to_str().unwrap(),
            "--peer",
            &peer.to_string(),
            "--wait",
        ]);
    }

    /// Waits until every chunk is uploaded, unpins torrent `name` and evicts every chunk:
    /// the next reads come from the remote.
    pub fn empty_cache(&self, name: &str) {
        self.wait_torrent("uploads", Duration::from_secs(60), |t| {
            t["chunks_uploaded"] == t["chunks_total"]
        });
        self.ok(&["seed", name, "on", "--no-pin"]);
        self.ok(&["evict"]);
        let s = self.status_json();
        assert_eq!(s["torrents"][0]["chunks_local"], 0, "{s:#}");
    }

    /// SIGKILLs the daemon and waits until it is gone.
    pub fn kill9(&self) {
        let pid = self.daemon_pid().expect("a running daemon");
        // SAFETY: kill(2) on the daemon this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        while unsafe { libc::kill(pid, 0) } == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's pid, from the pid file it keeps in the library.
    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.home.join("daemon.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Bae {
    fn drop(&mut self) {
        let mp = self.mountpoint.to_str().unwrap().to_owned();
        let stopped = self
            .cmd(&["umount", "--lazy", &mp])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !stopped {
            let _ = Command::new("fusermount3").args(["-uz", &mp]).output();
        }
        if let Some(pid) = self.daemon_pid() {
            // SAFETY: kill(2) on a pid read from our own library; at worst ESRCH.
            if unsafe { libc::kill(pid, 0) } == 0 {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A small album: FLAC tracks made with sox, a cover image, a cue sheet and a log.
/// Returns the album directory.
pub fn make_flac_album(parent: &Path, name: &str, seconds_per_track: u32, tracks: u32) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cue = format!("PERFORMER \"bae test\"\nTITLE \"{name}\"\n");
    for i in 1..=tracks {
        let file = format!("{i:02} - Tone {i}.flac");
        let freq = 220 * i;
        let st = Command::new("sox")
            .args(["-n", "-r", "44100", "-b", "16", "-c", "2"])
            .arg(dir.join(&file))
            .args([
                "synth",
                &seconds_per_track.to_string(),
                "sine",
                &freq.to_string(),
                "pinknoise",
                "vol",
                "0.5",
            ])
            .status()
            .expect("sox is installed by scripts/test");
        assert!(st.success());
        cue += &format!("FILE \"{file}\" WAVE\n  TRACK {i:02} AUDIO\n    INDEX 01 00:00:00\n");
    }
    std::fs::write(dir.join("album.cue"), cue).unwrap();
    let cover: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(dir.join("cover.jpg"), cover).unwrap();
    std::fs::write(
        dir.join("rip.log"),
        "Exact Audio Copy V1.6\nAll tracks accurately ripped\n",
    )
    .unwrap();
    dir
}

/// Files of a directory (names only), sorted.
pub fn file_names(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| PathBuf::from(e.unwrap().file_name()))
        .collect();
    v.sort();
    v
}

/// Every file of `original` has the same sha256 under `copy`.
pub fn assert_same_files(original: &Path, copy: &Path) {
    for rel in file_names(original) {
        assert_eq!(
            sha256_file(&original.join(&rel)),
            sha256_file(&copy.join(&rel)),
            "{} differs",
            rel.display()
        );
    }
}

pub fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let data = std::fs::read(p).unwrap();
    hex::encode(sha2::Sha256::digest(&data))
}
