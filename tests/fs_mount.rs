//! The mount through a real kernel FUSE mount (needs root and /dev/fuse), over a test
//! content backed by real files: what a user's tools see must match the sources.

#[path = "common/mount.rs"]
mod mount_common;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use bae::fs::{is_fuse_mount, mount, FsError, MountOptions};
use bae::model::TorrentId;
use mount_common::{DiskContent, Mounted, TestTorrent, TorrentBuilder};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;

/// Generous bound that turns a hang into a failure (not a timing assertion).
const HANG_LIMIT: Duration = Duration::from_secs(60);

fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Two albums with the same name, a single-file torrent and a multi-file album with a
/// pad file in the middle, files straddling chunk boundaries.
fn library(src: &Path) -> Vec<TestTorrent> {
    vec![
        TorrentBuilder::new(src, 1, "Artist - Album (2001) [FLAC]")
            .file(
                &["Artist - Album", "01 - Intro.flac"],
                3 * MIB + 123,
                1_000_000_001,
            )
            .pad(16 * 1024 - 123)
            .file(
                &["Artist - Album", "02 - Song.flac"],
                5 * MIB + 7,
                1_000_000_002,
            )
            .file(&["Artist - Album", "cover.jpg"], 70_000, 1_000_000_003)
            .file(&["Artist - Album", "empty.log"], 0, 1_000_000_004)
            .build(),
        TorrentBuilder::new(src, 2, "single.flac")
            .file(&["single.flac"], 2 * MIB, 1_100_000_000)
            .build(),
        TorrentBuilder::new(src, 3, "Artist - Album (2001) [FLAC]")
            .file(&["other.flac"], 1000, 1_200_000_000)
            .build(),
    ]
}

fn src_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn tree_names_sizes_and_mtimes_match_the_metadata() {
    let src = src_dir();
    let m = Mounted::new(DiskContent::new(library(src.path())));
    let root = m.path();
    assert_eq!(
        names(root),
        BTreeSet::from([
            "Artist - Album (2001) [FLAC]".to_string(),
            "Artist - Album (2001) [FLAC] (2)".to_string(),
            "single.flac".to_string(),
        ])
    );
    let album = root.join("Artist - Album (2001) [FLAC]/Artist - Album");
    assert_eq!(
        names(&album),
        BTreeSet::from(
            [
                "01 - Intro.flac",
                "02 - Song.flac",
                "cover.jpg",
                "empty.log"
            ]
            .map(String::from)
        )
    );
    for (name, len, mtime) in [
        ("01 - Intro.flac", 3 * MIB + 123, 1_000_000_001),
        ("02 - Song.flac", 5 * MIB + 7, 1_000_000_002),
        ("cover.jpg", 70_000, 1_000_000_003),
        ("empty.log", 0, 1_000_000_004),
    ] {
        let meta = fs::metadata(album.join(name)).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.len(), len, "{name}");
        assert_eq!(meta.mtime(), mtime, "{name}");
        assert_eq!(meta.mode() & 0o777, 0o444);
    }
    let single = root.join("single.flac/single.flac");
    assert_eq!(fs::metadata(&single).unwrap().len(), 2 * MIB);
    assert!(fs::metadata(root.join("single.flac")).unwrap().is_dir());
    assert_eq!(
        names(&root.join("Artist - Album (2001) [FLAC] (2)")),
        BTreeSet::from(["other.flac".to_string()])
    );
    // Inode numbers are what a later mount of the same library will show.
    let ino = fs::metadata(&single).unwrap().ino();
    drop(m);
    let again = Mounted::new(DiskContent::new(library(src.path())));
    assert_eq!(
        fs::metadata(again.path().join("single.flac/single.flac"))
            .unwrap()
            .ino(),
        ino
    );
    let st = statvfs_blocks(again.path());
    assert!(st > 0);
}

/// `statvfs` block count of the mount (total shown bytes / block size).
fn statvfs_blocks(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer for the duration of the call.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_flag & libc::ST_RDONLY, libc::ST_RDONLY);
    st.f_blocks as u64
}

#[test]
fn mounted_files_hash_like_their_sources() {
    let src = src_dir();
    let torrents = library(src.path());
    let m = Mounted::new(DiskContent::new(torrents.clone()));
    let album = m.path().join("Artist - Album (2001) [FLAC]/Artist - Album");
    let pairs: Vec<(PathBuf, &Path)> = vec![
        (album.join("01 - Intro.flac"), torrents[0].source(0)),
        (album.join("02 - Song.flac"), torrents[0].source(2)),
        (album.join("cover.jpg"), torrents[0].source(3)),
        (album.join("empty.log"), torrents[0].source(4)),
        (
            m.path().join("single.flac/single.flac"),
            torrents[1].source(0),
        ),
        (
            m.path().join("Artist - Album (2001) [FLAC] (2)/other.flac"),
            torrents[2].source(0),
        ),
    ];
    for (mounted, source) in pairs {
        assert_eq!(
            sha256_file(&mounted),
            sha256_file(source),
            "{}",
            mounted.display()
        );
    }
    // Sequential reading reaches the kernel's largest request, one chunk (as root, the
    // mount raises the kernel read-ahead to match).
    let reads = m.content.reads.lock().unwrap().clone();
    let largest = reads.iter().map(|(_, r)| r.end - r.start).max().unwrap();
    assert_eq!(largest, MIB, "{reads:?}");
    // The open of a file asked for its first and last chunk early.
    let prefetched = m.content.prefetches.lock().unwrap().clone();
    let song_start = 3 * MIB + 16 * 1024;
    assert!(prefetched.contains(&(TorrentId(1), song_start..song_start + MIB)));
    let song_end = song_start + 5 * MIB + 7;
    assert!(prefetched.contains(&(TorrentId(1), song_end - MIB..song_end)));
}

#[test]
fn eight_concurrent_readers_at_random_offsets_get_the_right_bytes() {
    let src = src_dir();
    let torrents = vec![TorrentBuilder::new(src.path(), 1, "Big")
        .file(&["a.flac"], 9 * MIB + 333, 1)
        .file(&["b.flac"], 6 * MIB + 1, 1)
        .build()];
    let m = Mounted::new(DiskContent::new(torrents.clone()));
    let files = [
        (
            m.path().join("Big/a.flac"),
            fs::read(torrents[0].source(0)).unwrap(),
        ),
        (
            m.path().join("Big/b.flac"),
            fs::read(torrents[0].source(1)).unwrap(),
        ),
    ];
    thread::scope(|s| {
        for reader in 0..8u64 {
            let (path, expected) = &files[reader as usize % 2];
            s.spawn(move || {
                let f = File::open(path).unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(reader);
                for _ in 0..150 {
                    let offset = rng.random_range(0..expected.len() as u64 + 10);
                    let len = rng.random_range(1..(2 * MIB) as usize);
                    let mut buf = vec![0u8; len];
                    let n = read_full_at(&f, &mut buf, offset);
                    let start = (offset as usize).min(expected.len());
                    let end = (offset as usize + len).min(expected.len());
                    assert_eq!(n, end - start, "reader {reader} at {offset}+{len}");
                    assert!(
                        buf[..n] == expected[start..end],
                        "reader {reader} at {offset}+{len}"
                    );
                }
            });
        }
    });
}

/// Reads until `buf` is full or end of file; returns how many bytes were read.
fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], offset + done as u64).unwrap();
        if n == 0 {
            break;
        }
        done += n;
    }
    done
}

fn assert_erofs<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    let err = r.expect_err(what);
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{what}: {err}");
}

#[test]
fn every_change_is_refused_with_erofs() {
    let src = src_dir();
    let m = Mounted::new(DiskContent::new(library(src.path())));
    let dir = m.path().join("single.flac");
    let file = dir.join("single.flac");
    assert_erofs("create", File::create(dir.join("new")));
    assert_erofs("open for write", OpenOptions::new().write(true).open(&file));
    assert_erofs(
        "open read-write",
        OpenOptions::new().read(true).write(true).open(&file),
    );
    assert_erofs("append", OpenOptions::new().append(true).open(&file));
    assert_erofs(
        "truncate",
        OpenOptions::new().write(true).truncate(true).open(&file),
    );
    assert_erofs("mkdir", fs::create_dir(dir.join("d")));
    assert_erofs("mkdir at root", fs::create_dir(m.path().join("d")));
    assert_erofs("rename", fs::rename(&file, dir.join("renamed")));
    assert_erofs("unlink", fs::remove_file(&file));
    assert_erofs("rmdir", fs::remove_dir(&dir));
    assert_erofs("symlink", std::os::unix::fs::symlink("x", dir.join("l")));
    assert_erofs("hard link", fs::hard_link(&file, dir.join("h")));
    assert_erofs(
        "chmod",
        fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o777)),
    );
    // ftruncate needs a writable descriptor, which cannot be had; truncate(2) by path:
    let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string for the duration of the call.
    let rc = unsafe { libc::truncate(c.as_ptr(), 0) };
    assert_erofs(
        "truncate(2)",
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        },
    );
    // Nothing changed.
    assert_eq!(fs::metadata(&file).unwrap().len(), 2 * MIB);
    assert_eq!(names(&dir), BTreeSet::from(["single.flac".to_string()]));
}

#[test]
fn hostile_paths_stay_inside_their_torrent_directory() {
    let src = src_dir();
    let evil = TorrentBuilder::new(src.path(), 1, "../../evil")
        .file(&["..", "..", "..", "escaped"], 10, 1)
        .file(&["/etc", "passwd"], 11, 1)
        .file(&["", "", "x"], 12, 1)
        .file(&[".", "a/../../b"], 13, 1)
        .file(&["nul\0byte"], 14, 1)
        .file(&[".."], 15, 1)
        .file(&["x"], 16, 1)
        .build();
    let torrents = vec![evil];
    let m = Mounted::new(DiskContent::new(torrents.clone()));
    assert_eq!(names(m.path()), BTreeSet::from([".._.._evil".to_string()]));
    let top = m.path().join(".._.._evil");
    assert_eq!(
        names(&top),
        BTreeSet::from(
            [
                "escaped",
                "_etc",
                "x",
                "a_.._.._b",
                "nul_byte",
                "file 5",
                "x (2)"
            ]
            .map(String::from)
        )
    );
    let expect = [
        ("escaped", 0),
        ("_etc/passwd", 1),
        ("x", 2),
        ("a_.._.._b", 3),
        ("nul_byte", 4),
        ("file 5", 5),
        ("x (2)", 6),
    ];
    for (rel, index) in expect {
        let mounted = top.join(rel);
        assert_eq!(
            fs::read(&mounted).unwrap(),
            fs::read(torrents[0].source(index)).unwrap(),
            "{rel}"
        );
    }
    // Nothing appeared next to the mount point or above it.
    let parent = m.path().parent().unwrap();
    assert_eq!(names(parent), BTreeSet::from(["mnt".to_string()]));
    assert!(!parent.join("escaped").exists() && !Path::new("/escaped").exists());
}

#[test]
fn a_stuck_read_does_not_stall_reads_of_other_files() {
    let src = src_dir();
    let torrents = vec![
        TorrentBuilder::new(src.path(), 1, "Slow")
            .file(&["slow.flac"], 3 * MIB, 1)
            .build(),
        TorrentBuilder::new(src.path(), 2, "Fast")
            .file(&["fast.flac"], 3 * MIB, 1)
            .build(),
    ];
    let content = DiskContent::new(torrents.clone());
    let gate = content.gate(TorrentId(1));
    let m = Mounted::new(content);

    let (tx, stuck_done) = mpsc::channel();
    let slow = m.path().join("Slow/slow.flac");
    let slow_reader = thread::spawn(move || {
        let _ = tx.send(fs::read(slow));
    });
    // Several reads of another torrent complete while the slow read is waiting.
    let fast_expected = fs::read(torrents[1].source(0)).unwrap();
    let (ftx, fast_done) = mpsc::channel();
    let fast = m.path().join("Fast/fast.flac");
    let fast_reader = thread::spawn(move || {
        for _ in 0..3 {
            let _ = ftx.send(fs::read(&fast));
        }
    });
    for _ in 0..3 {
        let got = fast_done
            .recv_timeout(HANG_LIMIT)
            .expect("fast read stalled")
            .unwrap();
        assert!(got == fast_expected);
    }
    assert!(
        stuck_done.try_recv().is_err(),
        "the gated read finished before its gate opened"
    );
    gate.open();
    let slow_bytes = stuck_done
        .recv_timeout(HANG_LIMIT)
        .expect("slow read never ended")
        .unwrap();
    assert!(slow_bytes == fs::read(torrents[0].source(0)).unwrap());
    slow_reader.join().unwrap();
    fast_reader.join().unwrap();
}

#[test]
fn a_content_error_becomes_eio_and_other_torrents_still_read() {
    let src = src_dir();
    let torrents = vec![
        TorrentBuilder::new(src.path(), 1, "Broken")
            .file(&["b.flac"], MIB, 1)
            .build(),
        TorrentBuilder::new(src.path(), 2, "Fine")
            .file(&["f.flac"], MIB, 1)
            .build(),
    ];
    let content = DiskContent::new(torrents.clone());
    content.fail(TorrentId(1));
    let m = Mounted::new(content);
    let err = fs::read(m.path().join("Broken/b.flac")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Metadata is still right, and other torrents are unaffected.
    assert_eq!(
        fs::metadata(m.path().join("Broken/b.flac")).unwrap().len(),
        MIB
    );
    assert!(
        fs::read(m.path().join("Fine/f.flac")).unwrap() == fs::read(torrents[1].source(0)).unwrap()
    );
}

#[test]
fn a_hung_content_read_ends_in_eio_at_the_read_timeout() {
    let src = src_dir();
    let torrents = vec![TorrentBuilder::new(src.path(), 1, "Hung")
        .file(&["h.flac"], MIB, 1)
        .build()];
    let content = DiskContent::new(torrents);
    let _gate = content.gate(TorrentId(1));
    let options = MountOptions {
        read_timeout: Some(Duration::from_millis(300)),
        ..MountOptions::default()
    };
    let m = Mounted::with_options(content, options);
    let err = fs::read(m.path().join("Hung/h.flac")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
}

#[test]
fn new_torrents_appear_and_known_inodes_stay() {
    let src = src_dir();
    let one = TorrentBuilder::new(src.path(), 1, "One")
        .file(&["a"], 10, 1)
        .build();
    let two = TorrentBuilder::new(src.path(), 2, "Two")
        .file(&["b"], 20, 1)
        .build();
    // The default (long) attribute TTL: changes reach the kernel as invalidations.
    let m = Mounted::new(DiskContent::new(vec![one.clone()]));
    let ino = fs::metadata(m.path().join("One/a")).unwrap().ino();
    assert_eq!(fs::metadata(m.path()).unwrap().nlink(), 3);
    assert_eq!(
        fs::metadata(m.path().join("Two")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    m.content.set(vec![two.clone(), one]);
    assert_eq!(fs::metadata(m.path()).unwrap().nlink(), 4);
    assert_eq!(
        names(m.path()),
        BTreeSet::from(["One".to_string(), "Two".to_string()])
    );
    assert_eq!(
        fs::read(m.path().join("Two/b")).unwrap(),
        fs::read(two.source(0)).unwrap()
    );
    assert_eq!(fs::metadata(m.path().join("One/a")).unwrap().ino(), ino);
    m.content.set(vec![two]);
    assert_eq!(names(m.path()), BTreeSet::from(["Two".to_string()]));
    assert_eq!(
        fs::metadata(m.path().join("One/a")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        fs::metadata(m.path().join("One")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(fs::metadata(m.path()).unwrap().nlink(), 3);
}

#[test]
fn bad_mount_points_get_clear_errors() {
    let src = src_dir();
    let content = DiskContent::new(library(src.path()));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = mount(content.clone(), &missing, MountOptions::default()).unwrap_err();
    assert!(matches!(err, FsError::MountPointMissing(_)), "{err}");
    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    let err = mount(content.clone(), &file, MountOptions::default()).unwrap_err();
    assert!(matches!(err, FsError::MountPointNotDir(_)), "{err}");
    let err = mount(content.clone(), dir.path(), MountOptions::default()).unwrap_err();
    assert!(matches!(err, FsError::MountPointNotEmpty(_)), "{err}");
    // Mounting twice on the same directory: the second is refused, the first unharmed.
    let m = Mounted::new(content.clone());
    let err = mount(content, m.path(), MountOptions::default()).unwrap_err();
    assert!(matches!(err, FsError::AlreadyMounted(_)), "{err}");
    assert!(err.to_string().contains("already mounted"));
    assert!(fs::metadata(m.path().join("single.flac/single.flac")).is_ok());
}

#[test]
fn unmount_with_an_open_file_is_busy_and_lazy_unmount_keeps_it_readable() {
    let src = src_dir();
    let torrents = library(src.path());
    let expected = fs::read(torrents[1].source(0)).unwrap();
    let mut m = Mounted::new(DiskContent::new(torrents));
    let mountpoint = m.path().to_path_buf();
    let path = mountpoint.join("single.flac/single.flac");

    // Plain unmount refuses while a file is open, and the mount keeps working.
    let open = File::open(&path).unwrap();
    let handle = m.handle.as_mut().unwrap();
    let err = handle.unmount().unwrap_err();
    assert!(matches!(err, FsError::Busy(_)), "{err}");
    assert!(is_fuse_mount(&mountpoint));
    assert_eq!(fs::read(&path).unwrap().len(), expected.len());
    drop(open);
    handle.unmount().unwrap();
    assert!(!is_fuse_mount(&mountpoint));
    assert!(names(&mountpoint).is_empty());

    // Lazy unmount: the path is free at once, the open file reads to the end.
    let src2 = src_dir();
    let torrents = library(src2.path());
    let m = Mounted::new(DiskContent::new(torrents));
    let mut open = File::open(m.path().join("single.flac/single.flac")).unwrap();
    let mut first = vec![0u8; 4096];
    open.read_exact(&mut first).unwrap();
    let mut m = m;
    m.handle.as_mut().unwrap().unmount_lazy().unwrap();
    assert!(!is_fuse_mount(m.path()));
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    first.extend_from_slice(&rest);
    assert!(first == expected);
    drop(open);

    // Dropping a handle while a file is open falls back to the lazy unmount.
    let src3 = src_dir();
    let mut m = Mounted::new(DiskContent::new(library(src3.path())));
    let open = File::open(m.path().join("single.flac/single.flac")).unwrap();
    drop(m.handle.take());
    assert!(!is_fuse_mount(m.path()));
    let mut all = Vec::new();
    (&open).read_to_end(&mut all).unwrap();
    assert!(all == expected);
}

/// A file left open on a lazily detached mount whose owner then shuts its runtime down
/// (a daemon stopping): once the read gate is closed every read is EIO, answered on
/// the dispatch thread, and nothing is polled on the runtime being shut down.
#[test]
fn reads_after_the_runtime_stops_are_eio() {
    let src = src_dir();
    let torrents = library(src.path());
    let expected = fs::read(torrents[1].source(0)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let options = MountOptions {
        runtime: Some(rt.handle().clone()),
        // A timer in every read: polled on a runtime shutting down, it panics.
        read_timeout: Some(Duration::from_secs(5)),
        ..MountOptions::default()
    };
    let mut m = Mounted::with_options(DiskContent::new(torrents), options);
    // O_DIRECT: every read reaches the filesystem, none is answered from the page cache.
    let open = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.path().join("single.flac/single.flac"))
        .unwrap();
    let mut head = [0u8; 4096];
    assert_eq!(open.read_at(&mut head, 0).unwrap(), head.len());
    assert!(head[..] == expected[..4096]);

    let handle = m.handle.take().unwrap();
    let gate = handle.read_gate();
    drop(handle); // busy: detached lazily, the file stays open on it
    assert!(!is_fuse_mount(m.path()));
    let mut more = [0u8; 4096];
    assert_eq!(open.read_at(&mut more, 8192).unwrap(), more.len());
    assert!(more[..] == expected[8192..8192 + 4096]);

    gate.close();
    rt.shutdown_timeout(Duration::from_secs(5));
    // A read that would wait (its torrent held back) polls its timeout's timer: on the
    // dispatch thread, under a runtime shut down, that panics and nothing answers.
    let _held = m.content.gate(TorrentId(2));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let answers: Vec<_> = [0, 1 << 20]
            .into_iter()
            .map(|offset| open.read_at(&mut buf, offset).map_err(|e| e.raw_os_error()))
            .collect();
        let _ = tx.send(answers);
    });
    let answers = rx
        .recv_timeout(HANG_LIMIT)
        .expect("a read hung after the runtime stopped");
    assert_eq!(answers, vec![Err(Some(libc::EIO)); 2]);
}

/// A FUSE mount whose server is gone, as a crashed daemon leaves it: the kernel mount
/// exists, its /dev/fuse descriptor is closed, every access fails with ENOTCONN.
fn make_stale_mount(mountpoint: &Path) {
    use std::os::fd::AsRawFd;
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .unwrap();
    let opts = format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd());
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let target = c(mountpoint.to_str().unwrap());
    let (source, fstype, data) = (c("bae"), c("fuse.bae"), c(&opts));
    // SAFETY: valid C strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_RDONLY,
            data.as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    drop(dev);
}

#[test]
fn a_stale_mount_is_reported_and_can_be_cleaned_up() {
    let src = src_dir();
    let content = DiskContent::new(library(src.path()));
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    make_stale_mount(&mountpoint);
    struct Cleanup<'a>(&'a Path);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = bae::fs::unmount_path(self.0, true);
        }
    }
    let _cleanup = Cleanup(&mountpoint);
    assert_eq!(
        fs::metadata(&mountpoint).unwrap_err().raw_os_error(),
        Some(libc::ENOTCONN)
    );
    assert!(is_fuse_mount(&mountpoint));

    let err = mount(content.clone(), &mountpoint, MountOptions::default()).unwrap_err();
    assert!(matches!(err, FsError::StaleMount(_)), "{err}");
    bae::fs::unmount_path(&mountpoint, false).unwrap();
    assert!(!is_fuse_mount(&mountpoint));
    let err = bae::fs::unmount_path(&mountpoint, false).unwrap_err();
    assert!(matches!(err, FsError::NotMounted(_)), "{err}");

    let mut handle = mount(content, &mountpoint, MountOptions::default()).unwrap();
    bae::fs::wait_until_mounted(&mountpoint, HANG_LIMIT).unwrap();
    assert!(fs::metadata(mountpoint.join("single.flac/single.flac")).is_ok());
    handle.unmount().unwrap();
}

#[test]
fn a_large_directory_lists_completely_and_in_order() {
    let src = src_dir();
    let mut b = TorrentBuilder::new(src.path(), 1, "Many");
    for i in 0..1500 {
        b = b.file(
            &[&format!("track {i:04} with a fairly long name.flac")],
            1,
            1,
        );
    }
    let m = Mounted::new(DiskContent::new(vec![b.build()]));
    let listed: Vec<String> = fs::read_dir(m.path().join("Many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let expected: Vec<String> = (0..1500)
        .map(|i| format!("track {i:04} with a fairly long name.flac"))
        .collect();
    assert_eq!(listed, expected);
}
