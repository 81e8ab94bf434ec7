//! How the mount fits the system around it, through the real `bae` binary, real
//! `mount`/`umount` and a real kernel FUSE mount: the tree follows torrents added and
//! removed while mounted; permissions like other FUSE mounts (checked as a second
//! user, uid 65534); the mount helper; `sd_notify` and SIGTERM for systemd units.

mod common;
#[path = "common/mount.rs"]
mod mount_common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bae::fs::{is_fuse_mount, MountOptions, Permissions};
use common::bae::{make_flac_album, Bae};
use common::swarm::python_torrent;
use mount_common::{DiskContent, Mounted, TorrentBuilder};

/// Generous bound that turns a hang into a failure (not a timing assertion).
const HANG_LIMIT: Duration = Duration::from_secs(120);

/// The unprivileged second user of the permission tests.
const NOBODY: &str = "65534";

/// Runs `cmd` as uid/gid 65534 with no supplementary groups.
fn as_nobody(cmd: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .args(cmd)
        .output()
        .unwrap()
}

/// Lets anyone traverse to `path` (temporary directories are 0700).
fn open_path_to(path: &Path) {
    let mut p = path.parent();
    while let Some(dir) = p {
        if dir.starts_with(std::env::temp_dir()) && dir != std::env::temp_dir() {
            let mut perm = std::fs::metadata(dir).unwrap().permissions();
            perm.set_mode(perm.mode() | 0o755);
            std::fs::set_permissions(dir, perm).unwrap();
        }
        p = dir.parent();
    }
}

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn a_torrent_added_while_mounted_appears_at_once_and_a_removed_one_goes() {
    let dir = tempfile::tempdir().unwrap();
    let first = make_flac_album(&dir.path().join("a"), "First Album", 1, 2);
    let second = make_flac_album(&dir.path().join("b"), "Second Album", 1, 2);
    let (t1, t2) = (dir.path().join("1.torrent"), dir.path().join("2.torrent"));
    python_torrent(&first, &t1, 64 * 1024, "v1");
    python_torrent(&second, &t2, 64 * 1024, "hybrid");
    let bae = Bae::new();
    bae.ok(&["add", "--paused", t1.to_str().unwrap()]);
    bae.mount();
    let mp = &bae.mountpoint;
    assert_eq!(listing(mp), BTreeSet::from(["First Album".to_string()]));
    // Looked up before it exists: the kernel must not remember the miss.
    assert!(std::fs::metadata(mp.join("Second Album")).is_err());

    bae.ok(&["add", "--paused", t2.to_str().unwrap()]);
    // `add` returns once the daemon has it: no waiting or polling here.
    assert_eq!(
        listing(mp),
        BTreeSet::from(["First Album".to_string(), "Second Album".to_string()])
    );
    assert!(std::fs::metadata(mp.join("Second Album")).unwrap().is_dir());
    assert_eq!(
        listing(&mp.join("Second Album")),
        listing(&second),
        "the new album's files"
    );

    bae.ok(&["remove", "First Album"]);
    assert_eq!(listing(mp), BTreeSet::from(["Second Album".to_string()]));
    // Looked up (and cached by the kernel) before: gone now, not stale.
    assert_eq!(
        std::fs::metadata(mp.join("First Album"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    bae.umount();
}

fn small_library(src: &Path) -> Vec<mount_common::TestTorrent> {
    vec![TorrentBuilder::new(src, 1, "Album")
        .file(&["a.flac"], 5000, 1_000_000_000)
        .build()]
}

#[test]
fn without_allow_other_another_user_gets_eacces() {
    let src = tempfile::tempdir().unwrap();
    let m = Mounted::new(DiskContent::new(small_library(src.path())));
    open_path_to(m.path());
    let mp = m.path().to_str().unwrap();
    assert!(std::fs::read_dir(m.path()).is_ok(), "the owner lists it");
    let out = as_nobody(&["ls", mp]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn allow_other_uid_gid_and_modes_apply_to_other_users() {
    let src = tempfile::tempdir().unwrap();
    let content = DiskContent::new(small_library(src.path()));
    // Owned by nobody, others shut out by the umask: nobody reads, a third uid not.
    let m = Mounted::with_options(
        content.clone(),
        MountOptions {
            allow_other: true,
            permissions: Permissions {
                uid: Some(65534),
                gid: Some(65534),
                umask: 0o027,
                file_mode: Some(0o644),
                dir_mode: None,
            },
            ..MountOptions::default()
        },
    );
    open_path_to(m.path());
    let file = m.path().join("Album/a.flac");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (65534, 65534, 0o640)
    );
    let dir = std::fs::metadata(m.path().join("Album")).unwrap();
    assert_eq!(dir.mode() & 0o777, 0o550);
    let out = as_nobody(&["cat", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout,
        std::fs::read(content_source(src.path())).unwrap()
    );
    let third = Command::new("setpriv")
        .args(["--reuid", "4242", "--regid", "4242", "--clear-groups", "--"])
        .args(["cat", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!third.status.success());
    assert!(String::from_utf8_lossy(&third.stderr).contains("Permission denied"));
}

/// The source file of [`small_library`]'s only file.
fn content_source(src: &Path) -> PathBuf {
    let t = small_library(src);
    t[0].source(0).to_path_buf()
}

/// Serialises tests that put the helper in /usr/sbin, and removes it afterwards.
struct HelperInstalled {
    link: PathBuf,
    _lock: std::fs::File,
}

impl HelperInstalled {
    fn new() -> HelperInstalled {
        let lock = std::fs::File::create("/tmp/bae-mount-helper-test.lock").unwrap();
        // SAFETY: flock on a descriptor we own.
        assert_eq!(
            unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
            0
        );
        let link = PathBuf::from("/usr/sbin/mount.fuse.bae");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_bae"), &link).unwrap();
        HelperInstalled { link, _lock: lock }
    }
}

impl Drop for HelperInstalled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
    }
}

fn wait_until_gone(pid: i32) {
    let deadline = Instant::now() + HANG_LIMIT;
    // SAFETY: kill with signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "daemon {pid} did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mount_t_fuse_bae_mounts_with_options_and_umount_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let album = make_flac_album(&dir.path().join("a"), "Helper Album", 1, 2);
    let torrent = dir.path().join("1.torrent");
    python_torrent(&album, &torrent, 64 * 1024, "v1");
    let bae = Bae::new();
    bae.ok(&["add", "--paused", torrent.to_str().unwrap()]);
    let _helper = HelperInstalled::new();
    let home = bae.home.to_str().unwrap();
    let mp = bae.mountpoint.to_str().unwrap();

    // An unknown option is refused with its name, and nothing is mounted.
    let out = Command::new("mount")
        .args(["-t", "fuse.bae", home, mp, "-o", "allow_other,frobnicate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown mount option \"frobnicate\""),
        "{stderr}"
    );
    assert!(!is_fuse_mount(&bae.mountpoint));

    let opts = "rw,allow_other,uid=1000,gid=1000,umask=022,cache_size=50M,_netdev,nofail,x-systemd.automount,noauto";
    let out = Command::new("mount")
        .args(["-t", "fuse.bae", home, mp, "-o", opts])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        bae.log()
    );
    assert!(is_fuse_mount(&bae.mountpoint));
    let pid = bae.daemon_pid().expect("daemon pid");
    let meta = std::fs::metadata(bae.mountpoint.join("Helper Album")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (1000, 1000, 0o555)
    );
    open_path_to(&bae.mountpoint);
    let out = as_nobody(&["ls", mp]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Helper Album");

    let out = Command::new("umount").arg(mp).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon sees its mount gone and stops by itself.
    wait_until_gone(pid);
    assert!(!is_fuse_mount(&bae.mountpoint));
}

#[test]
fn foreground_mount_notifies_systemd_and_stops_cleanly_on_sigterm() {
    let bae = Bae::new();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify");
    let listener = UnixDatagram::bind(&socket).unwrap();
    listener.set_read_timeout(Some(HANG_LIMIT)).unwrap();
    let mut child = bae
        .cmd(&["mount", "-f", bae.mountpoint.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("a READY notification");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.contains(&format!("MAINPID={}", child.id())), "{msg}");
    // Ready means mounted.
    assert!(is_fuse_mount(&bae.mountpoint));
    assert!(std::fs::read_dir(&bae.mountpoint).is_ok());

    // SAFETY: signalling the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + HANG_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("bae mount -f did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}\n{}", bae.log());
    assert!(!is_fuse_mount(&bae.mountpoint));
}

/// `getfattr --only-values -n NAME PATH`, or its stderr as the error.
fn getfattr(name: &str, path: &Path) -> Result<String, String> {
    let out = Command::new("getfattr")
        .args(["--only-values", "--absolute-names", "-n", name])
        .arg(path)
        .output()
        .expect("getfattr (package attr) is installed");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn files_and_directories_carry_progress_cached_and_infohash_xattrs() {
    let dir = tempfile::tempdir().unwrap();
    let done = make_flac_album(&dir.path().join("a"), "Done Album", 1, 2);
    let waiting = make_flac_album(&dir.path().join("b"), "Waiting Album", 1, 2);
    let (t1, t2) = (dir.path().join("1.torrent"), dir.path().join("2.torrent"));
    python_torrent(&done, &t1, 64 * 1024, "v1");
    python_torrent(&waiting, &t2, 64 * 1024, "hybrid");
    let bae = Bae::new();
    bae.ok(&[
        "import",
        done.to_str().unwrap(),
        "--torrent",
        t1.to_str().unwrap(),
    ]);
    bae.ok(&["add", "--paused", t2.to_str().unwrap()]);
    bae.mount();
    let status = bae.status_json();
    let torrent = |name: &str| {
        status["torrents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()
            .clone()
    };
    let mp = &bae.mountpoint;
    let done_dir = mp.join("Done Album");
    let done_file = done_dir.join("01 - Tone 1.flac");
    assert!(done_file.exists(), "{:?}", listing(&done_dir));
    for p in [&done_dir, &done_file] {
        assert_eq!(getfattr("user.bae.progress", p).unwrap(), "1.0000");
        assert_eq!(
            getfattr("user.bae.infohash", p).unwrap(),
            torrent("Done Album")["info_hash"].as_str().unwrap()
        );
        let cached: u64 = getfattr("user.bae.cached", p).unwrap().parse().unwrap();
        assert_eq!(
            cached,
            torrent("Done Album")["size_bytes"].as_u64().unwrap()
        );
    }
    let w = mp.join("Waiting Album");
    assert_eq!(getfattr("user.bae.progress", &w).unwrap(), "0.0000");
    assert_eq!(getfattr("user.bae.cached", &w).unwrap(), "0");
    // Other names: ENODATA; the root has none of ours.
    let e = getfattr("user.bae.nope", &w).unwrap_err();
    assert!(e.contains("No such attribute"), "{e}");
    let e = getfattr("user.bae.progress", mp).unwrap_err();
    assert!(e.contains("No such attribute"), "{e}");
    // Listing (getfattr -d probes the size first, then reads).
    let out = Command::new("getfattr")
        .args(["-d", "--absolute-names"])
        .arg(&done_file)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    for name in [
        "user.bae.progress=\"1.0000\"",
        "user.bae.cached=",
        "user.bae.infohash=",
    ] {
        assert!(listed.contains(name), "{listed}");
    }
    // A buffer too small is ERANGE, a size probe gives the length.
    let c = std::ffi::CString::new(done_file.to_str().unwrap()).unwrap();
    let n = std::ffi::CString::new("user.bae.progress").unwrap();
    // SAFETY: valid C strings; a null buffer with size 0 is the documented probe.
    let len = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(len, 6);
    let mut small = [0u8; 3];
    // SAFETY: `small` is a writable buffer of the given length.
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), small.as_mut_ptr().cast(), 3) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE)
    );
    bae.umount();
}
