//! Kernel-free tests of the tree and the filesystem logic over an in-memory content.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::*;
use crate::model::TorrentId;

const MIB: u64 = 1 << 20;

/// How a [`MemContent`] answers reads of one torrent.
#[derive(Clone, Debug)]
enum Behaviour {
    Serve,
    Fail(fn() -> ContentError),
    Hang,
    ShortBy(usize),
}

#[derive(Default)]
struct MemState {
    sinks: Subscribers,
    /// Torrents whose reads would answer at once (`Content::readable_now`).
    ready: std::collections::HashSet<TorrentId>,
    torrents: Vec<(TorrentEntry, Bytes)>,
    behaviour: HashMap<TorrentId, Behaviour>,
    prefetches: Vec<(TorrentId, Range<u64>)>,
    /// Ranges hinted with `prefetch_stored` (not to be asked of the swarm).
    stored: Vec<(TorrentId, Range<u64>)>,
    reads: Vec<(TorrentId, Range<u64>)>,
}

/// Torrents held as byte streams in memory; records prefetch hints and reads.
#[derive(Default)]
struct MemContent {
    state: Mutex<MemState>,
}

impl MemContent {
    /// Replaces the torrent set, telling the sinks what went and what is there.
    fn set(&self, torrents: Vec<(TorrentEntry, Bytes)>) {
        let mut s = self.state.lock().unwrap();
        for (old, _) in &s.torrents {
            if !torrents.iter().any(|(t, _)| t.id == old.id) {
                s.sinks.publish(ContentEvent::Removed(old.id));
            }
        }
        for (t, _) in &torrents {
            s.sinks.publish(ContentEvent::Upsert(t.clone()));
        }
        s.torrents = torrents;
    }
    fn behave(&self, t: TorrentId, b: Behaviour) {
        self.state.lock().unwrap().behaviour.insert(t, b);
    }
    fn take_prefetches(&self) -> Vec<(TorrentId, Range<u64>)> {
        std::mem::take(&mut self.state.lock().unwrap().prefetches)
    }

    fn take_stored(&self) -> Vec<(TorrentId, Range<u64>)> {
        std::mem::take(&mut self.state.lock().unwrap().stored)
    }
}

#[async_trait]
impl Content for MemContent {
    fn subscribe(&self, sink: Arc<dyn ContentSink>) {
        let s = self.state.lock().unwrap();
        let mut current: Vec<TorrentEntry> = s.torrents.iter().map(|(t, _)| t.clone()).collect();
        current.sort_by_key(|t| t.id);
        s.sinks.subscribe(sink, current);
    }
    async fn read(&self, t: TorrentId, range: Range<u64>) -> Result<Bytes, ContentError> {
        let (behaviour, bytes) = {
            let mut s = self.state.lock().unwrap();
            s.reads.push((t, range.clone()));
            let bytes = s
                .torrents
                .iter()
                .find(|(e, _)| e.id == t)
                .map(|(_, b)| b.clone());
            (
                s.behaviour.get(&t).cloned().unwrap_or(Behaviour::Serve),
                bytes,
            )
        };
        let bytes = bytes.ok_or(ContentError::NotFound)?;
        let slice = || bytes.slice(range.start as usize..range.end as usize);
        match behaviour {
            Behaviour::Serve => Ok(slice()),
            Behaviour::Fail(e) => Err(e()),
            Behaviour::Hang => std::future::pending().await,
            Behaviour::ShortBy(n) => Ok(slice().slice(n..)),
        }
    }
    fn stream_len(&self, t: TorrentId) -> Option<u64> {
        let s = self.state.lock().unwrap();
        s.torrents
            .iter()
            .find(|(e, _)| e.id == t)
            .map(|(_, b)| b.len() as u64)
    }
    fn prefetch(&self, t: TorrentId, range: Range<u64>) {
        self.state.lock().unwrap().prefetches.push((t, range));
    }
    fn prefetch_stored(&self, t: TorrentId, range: Range<u64>) {
        self.state.lock().unwrap().stored.push((t, range));
    }
    fn readable_now(&self, t: TorrentId, _range: Range<u64>) -> bool {
        self.state.lock().unwrap().ready.contains(&t)
    }
}

/// A torrent of `files` (path, len) laid out back to back, bytes a function of position.
fn torrent(id: i64, name: &str, files: &[(&[&str], u64)]) -> (TorrentEntry, Bytes) {
    let mut offset = 0;
    let mut entries = Vec::new();
    for (path, len) in files {
        entries.push(FileEntry {
            path: path.iter().map(|s| s.to_string()).collect(),
            stream_offset: offset,
            len: *len,
            pad: false,
            mtime: 1_600_000_000 + id,
        });
        offset += len;
    }
    let bytes: Vec<u8> = (0..offset).map(|i| (i % 251) as u8 ^ id as u8).collect();
    (
        TorrentEntry {
            id: TorrentId(id),
            name: name.to_string(),
            added_at: 1_700_000_000,
            info_hash: format!("{id:040x}"),
            files: entries,
        },
        Bytes::from(bytes),
    )
}

fn entries(torrents: &[(TorrentEntry, Bytes)]) -> Vec<TorrentEntry> {
    torrents.iter().map(|(t, _)| t.clone()).collect()
}

/// Every file of the tree as "dir/…/name" → inode.
fn paths(tree: &Tree) -> HashMap<String, InodeNo> {
    tree.nodes()
        .filter(|n| n.ino != InodeNo::ROOT)
        .map(|n| (tree.path_of(n.ino).unwrap().join("/"), n.ino))
        .collect()
}

// ---- tree ----

#[test]
fn a_single_file_torrent_is_a_directory_holding_its_file() {
    let t = torrent(1, "Album", &[(&["track.flac"], 10)]);
    let tree = Tree::build(&entries(&[t]));
    let p = paths(&tree);
    assert!(p.contains_key("Album"));
    assert!(p.contains_key("Album/track.flac"));
    assert_eq!(p.len(), 2);
}

#[test]
fn equal_torrent_names_get_numbered_in_torrent_id_order() {
    let a = torrent(7, "Same", &[(&["a"], 1)]);
    let b = torrent(3, "Same", &[(&["b"], 1)]);
    let c = torrent(5, "Same", &[(&["c"], 1)]);
    let tree = Tree::build(&entries(&[a, b, c]));
    let p = paths(&tree);
    assert!(p.contains_key("Same/b"), "{p:?}");
    assert!(p.contains_key("Same (2)/c"));
    assert!(p.contains_key("Same (3)/a"));
}

#[test]
fn hostile_paths_stay_inside_their_torrent_directory() {
    let nasty: &[(&[&str], u64)] = &[
        (&["..", "..", "etc", "passwd"], 1),
        (&["/", "abs"], 1),
        (&["", "", "empty"], 1),
        (&[".", "dot"], 1),
        (&["a/../../b"], 1),
        (&["nul\0byte"], 1),
        (&["..", ".."], 1),
        (&[], 1),
    ];
    let t = torrent(1, "../../escape", nasty);
    let tree = Tree::build(&entries(&[t]));
    let p = paths(&tree);
    let mut names: Vec<&str> = p.keys().map(|s| s.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ".._.._escape",
            ".._.._escape/_",
            ".._.._escape/_/abs",
            ".._.._escape/a_.._.._b",
            ".._.._escape/dot",
            ".._.._escape/empty",
            ".._.._escape/etc",
            ".._.._escape/etc/passwd",
            ".._.._escape/file 6",
            ".._.._escape/file 7",
            ".._.._escape/nul_byte",
        ]
    );
    for n in tree.nodes().filter(|n| n.ino != InodeNo::ROOT) {
        assert!(!n.name.is_empty() && n.name != "." && n.name != "..");
        assert!(!n.name.contains('/') && !n.name.contains('\0'));
    }
}

#[test]
fn duplicate_paths_and_file_directory_clashes_are_renamed_deterministically() {
    let t = torrent(
        1,
        "T",
        &[
            (&["cd1", "01.flac"], 1),
            (&["cd1", "01.flac"], 2),
            (&["cd1"], 3),
            (&["cd1", "01 (2).flac"], 4),
        ],
    );
    let tree = Tree::build(&entries(&[t]));
    let size = |path: &str| {
        let ino = paths(&tree)[path];
        tree.get(ino).unwrap().as_file().unwrap().len_bytes
    };
    assert_eq!(size("T/cd1/01.flac"), 1);
    assert_eq!(size("T/cd1/01 (2).flac"), 2);
    assert_eq!(size("T/cd1 (2)"), 3);
    assert_eq!(size("T/cd1/01 (2) (2).flac"), 4);
}

#[test]
fn pad_files_are_hidden_and_mtime_falls_back_to_added_at() {
    let (mut t, _) = torrent(1, "T", &[(&["a"], 5), (&[".pad", "3"], 3), (&["b"], 5)]);
    t.files[1].pad = true;
    t.files[2].mtime = 0;
    let tree = Tree::build(&[t]);
    let p = paths(&tree);
    assert_eq!(p.len(), 3, "{p:?}");
    let b = tree.get(p["T/b"]).unwrap();
    assert_eq!(b.mtime, 1_700_000_000);
    assert_eq!(b.as_file().unwrap().stream_offset, 8);
    assert_eq!(tree.get(p["T/a"]).unwrap().mtime, 1_600_000_001);
    assert_eq!(tree.file_bytes(), 10);
}

#[test]
fn inode_numbers_survive_rebuilds_with_other_torrents_around() {
    let t1 = torrent(1, "One", &[(&["x", "a"], 1), (&["b"], 1)]);
    let t2 = torrent(2, "Two", &[(&["c"], 1)]);
    let t3 = torrent(3, "Three", &[(&["d"], 1)]);
    let first = paths(&Tree::build(&entries(&[t1.clone(), t2.clone()])));
    let second = paths(&Tree::build(&entries(&[t3, t2, t1])));
    for (path, ino) in &first {
        assert_eq!(second.get(path), Some(ino), "{path}");
    }
    assert_eq!(second.len(), first.len() + 2);
    // Numbers are distinct and never the root's.
    let mut all: Vec<u64> = second.values().map(|i| i.0).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), second.len());
    assert!(all.iter().all(|&i| i > 1 && i < 1 << 63));
}

proptest::proptest! {
    #[test]
    fn any_torrent_yields_a_consistent_tree(
        files in proptest::collection::vec(
            (proptest::collection::vec("[a./\0]{0,3}", 0..4), 0u64..5), 1..12)
    ) {
        let spec: Vec<(Vec<&str>, u64)> =
            files.iter().map(|(p, l)| (p.iter().map(|s| s.as_str()).collect(), *l)).collect();
        let spec: Vec<(&[&str], u64)> = spec.iter().map(|(p, l)| (p.as_slice(), *l)).collect();
        let t = torrent(9, "..", &spec);
        let tree = Tree::build(&entries(&[t]));
        // Every non-pad file appears exactly once, under the one torrent directory.
        let shown = tree.nodes().filter(|n| n.as_file().is_some()).count();
        proptest::prop_assert_eq!(shown, spec.len());
        let root = tree.get(InodeNo::ROOT).unwrap().as_dir().unwrap();
        proptest::prop_assert_eq!(root.entries, 1);
        for n in tree.nodes().filter(|n| n.ino != InodeNo::ROOT) {
            let path = tree.path_of(n.ino).unwrap();
            proptest::prop_assert_eq!(path[0].as_str(), "torrent 9");
            proptest::prop_assert!(path.iter().all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('/')));
            proptest::prop_assert!(tree.get(n.parent).unwrap().as_dir().is_some());
            proptest::prop_assert_eq!(tree.lookup(n.parent, n.name).ok().map(|c| c.ino), Some(n.ino));
        }
    }
}

// ---- filesystem ----

fn fs_over(torrents: Vec<(TorrentEntry, Bytes)>) -> (Arc<MemContent>, Filesystem) {
    let content = Arc::new(MemContent::default());
    content.set(torrents);
    let fs = Filesystem::new(content.clone(), FsConfig::default());
    (content, fs)
}

fn resolve(fs: &Filesystem, path: &str) -> Attr {
    let mut ino = InodeNo::ROOT;
    let mut attr = fs.getattr(ino).unwrap();
    for c in path.split('/') {
        attr = fs.lookup(ino, OsStr::new(c)).unwrap();
        ino = attr.ino;
    }
    attr
}

#[test]
fn lookup_getattr_and_readdir_show_the_tree() {
    let (_, fs) = fs_over(vec![torrent(
        1,
        "Album",
        &[(&["cd1", "a.flac"], 3), (&["b.flac"], 4)],
    )]);
    let album = resolve(&fs, "Album");
    assert_eq!(album.kind, EntryKind::Dir);
    assert_eq!(album.nlink, 3);
    assert_eq!(album.perm, 0o555);
    let b = resolve(&fs, "Album/b.flac");
    assert_eq!(
        (b.kind, b.size_bytes, b.perm, b.mtime),
        (EntryKind::File, 4, 0o444, 1_600_000_001)
    );
    assert_eq!(fs.getattr(b.ino).unwrap(), b);

    let all = fs.readdir(album.ino, 0, 100).unwrap();
    let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, [".", "..", "b.flac", "cd1"]);
    assert_eq!(all[1].attr.ino, InodeNo::ROOT);
    // Resuming from an entry's offset continues after it.
    let rest = fs.readdir(album.ino, all[2].next_offset, 100).unwrap();
    assert_eq!(
        rest.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["cd1"]
    );
    assert!(fs.readdir(album.ino, 99, 100).unwrap().is_empty());
    let two = fs.readdir(album.ino, 1, 2).unwrap();
    assert_eq!(
        two.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["..", "b.flac"]
    );

    assert_eq!(
        fs.lookup(album.ino, OsStr::new("nope"))
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    assert_eq!(
        fs.lookup(b.ino, OsStr::new("x")).unwrap_err().errno(),
        libc::ENOTDIR
    );
    assert_eq!(
        fs.readdir(b.ino, 0, 100).unwrap_err().errno(),
        libc::ENOTDIR
    );
    assert_eq!(
        fs.getattr(InodeNo(12345)).unwrap_err().errno(),
        libc::ENOENT
    );
    let s = fs.statfs();
    assert_eq!((s.blocks, s.files), (1, 5));
}

#[test]
fn opening_for_writing_is_refused_and_directories_are_not_files() {
    let (_, fs) = fs_over(vec![torrent(1, "A", &[(&["f"], 3)])]);
    let f = resolve(&fs, "A/f");
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_WRONLY | libc::O_CREAT,
    ] {
        assert_eq!(
            fs.open(f.ino, flags).unwrap_err().errno(),
            libc::EROFS,
            "{flags:#x}"
        );
    }
    assert_eq!(
        fs.open(resolve(&fs, "A").ino, libc::O_RDONLY)
            .unwrap_err()
            .errno(),
        libc::EISDIR
    );
    assert_eq!(fs.open_handles(), 0);
}

#[tokio::test]
async fn reads_map_to_the_stream_and_are_short_only_at_the_end() {
    let t = torrent(4, "T", &[(&["a"], 1000), (&["b"], 3000)]);
    let stream = t.1.clone();
    let (_, fs) = fs_over(vec![t]);
    let b = resolve(&fs, "T/b");
    let fh = fs.open(b.ino, libc::O_RDONLY).unwrap().fh;
    assert_eq!(
        fs.read(fh, 100, 50).await.unwrap(),
        stream.slice(1100..1150)
    );
    assert_eq!(
        fs.read(fh, 2990, 100).await.unwrap(),
        stream.slice(3990..4000)
    );
    assert!(fs.read(fh, 3000, 100).await.unwrap().is_empty());
    assert!(fs.read(fh, 9000, 100).await.unwrap().is_empty());
    assert_eq!(fs.read(fh, -1, 1).await.unwrap_err().errno(), libc::EINVAL);
    fs.release(fh);
    assert_eq!(fs.read(fh, 0, 1).await.unwrap_err().errno(), libc::EBADF);
}

#[tokio::test]
async fn read_ahead_runs_on_into_the_next_file_and_stops_at_the_end_of_the_torrent() {
    let t = torrent(3, "T", &[(&["a"], 3 * MIB), (&["b"], 2 * MIB)]);
    let (content, fs) = fs_over(vec![t]);
    let id = TorrentId(3);
    let chunk = MIB as u32;
    let a = fs.open(resolve(&fs, "T/a").ino, libc::O_RDONLY).unwrap().fh;
    content.take_prefetches();
    fs.read(a, 0, chunk).await.unwrap();
    fs.read(a, MIB as i64, chunk).await.unwrap();
    // The second window reaches past a's end: into b's first MiB.
    assert_eq!(
        content.take_prefetches(),
        vec![(id, MIB..2 * MIB), (id, 2 * MIB..4 * MIB)]
    );
    fs.read(a, 2 * MIB as i64, chunk).await.unwrap();
    // Then up to the end of the torrent, and no further.
    assert_eq!(content.take_prefetches(), vec![(id, 4 * MIB..5 * MIB)]);
    let b = fs.open(resolve(&fs, "T/b").ino, libc::O_RDONLY).unwrap().fh;
    content.take_prefetches();
    fs.read(b, 0, chunk).await.unwrap();
    assert_eq!(content.take_prefetches(), vec![(id, 4 * MIB..5 * MIB)]);
    fs.read(b, MIB as i64, chunk).await.unwrap();
    assert!(content.take_prefetches().is_empty());
}

#[tokio::test]
async fn open_prefetches_both_ends_and_sequential_reads_prefetch_ahead() {
    let t = torrent(2, "T", &[(&["pre"], 10), (&["big"], 20 * MIB)]);
    let (content, fs) = fs_over(vec![t]);
    let big = resolve(&fs, "T/big");
    let fh = fs.open(big.ino, libc::O_RDONLY).unwrap().fh;
    let id = TorrentId(2);
    // The head from wherever it is; the tail only from storage, so that a download
    // brings the head first.
    assert_eq!(content.take_prefetches(), vec![(id, 10..10 + MIB)]);
    assert_eq!(
        content.take_stored(),
        vec![(id, 10 + 19 * MIB..10 + 20 * MIB)]
    );
    let chunk = MIB as u32;
    fs.read(fh, 0, chunk).await.unwrap();
    fs.read(fh, MIB as i64, chunk).await.unwrap();
    assert_eq!(
        content.take_prefetches(),
        vec![
            (id, 10 + MIB..10 + 2 * MIB),
            (id, 10 + 2 * MIB..10 + 4 * MIB)
        ]
    );
    // A random read asks for nothing ahead.
    fs.read(fh, 15 * MIB as i64, 4096).await.unwrap();
    assert!(content.take_prefetches().is_empty());
}

#[test]
fn an_inode_number_names_one_content() {
    // Kept pages are only right if an inode number never names other bytes: a torrent
    // id the catalog gives again (after a removal) to another torrent gets new numbers.
    let (first, _) = torrent(1, "A", &[(&["f"], 3)]);
    let (content, fs) = fs_over(vec![(first.clone(), Bytes::from_static(b"abc"))]);
    let old = resolve(&fs, "A/f").ino;
    let mut other = first.clone();
    other.info_hash = "ff".repeat(20);
    content.set(vec![(other, Bytes::from_static(b"xyz"))]);
    let new = resolve(&fs, "A/f").ino;
    assert_ne!(old, new);
    // The same torrent added again is the same bytes: the same numbers.
    content.set(Vec::new());
    content.set(vec![(first, Bytes::from_static(b"abc"))]);
    assert_eq!(resolve(&fs, "A/f").ino, old);
}

#[tokio::test]
async fn content_errors_become_eio_or_enoent() {
    let (content, fs) = fs_over(vec![torrent(1, "A", &[(&["f"], 300)])]);
    let ino = resolve(&fs, "A/f").ino;
    let cases: [(fn() -> ContentError, i32); 4] = [
        (|| ContentError::Integrity("bad piece".into()), libc::EIO),
        (|| ContentError::Timeout, libc::EIO),
        (
            || ContentError::Unavailable("remote down".into()),
            libc::EIO,
        ),
        (|| ContentError::NotFound, libc::ENOENT),
    ];
    for (i, (make, errno)) in cases.into_iter().enumerate() {
        // Another range each time: a failed wait is remembered for a moment.
        let fh = fs.open(ino, libc::O_RDONLY).unwrap().fh;
        content.behave(TorrentId(1), Behaviour::Fail(make));
        let at = 20 * i as i64;
        assert_eq!(fs.read(fh, at, 10).await.unwrap_err().errno(), errno);
    }
    // Fewer bytes than asked for is never passed on as a short read.
    let fh = fs.open(ino, libc::O_RDONLY).unwrap().fh;
    content.behave(TorrentId(1), Behaviour::ShortBy(1));
    assert_eq!(fs.read(fh, 0, 10).await.unwrap_err().errno(), libc::EIO);
}

#[tokio::test]
async fn the_read_timeout_backstop_ends_a_hung_read_with_eio() {
    let content = Arc::new(MemContent::default());
    content.set(vec![torrent(1, "A", &[(&["f"], 300)])]);
    content.behave(TorrentId(1), Behaviour::Hang);
    let config = FsConfig {
        read_timeout: Some(Duration::from_millis(50)),
        ..FsConfig::default()
    };
    let fs = Filesystem::new(content.clone(), config);
    let fh = fs.open(resolve(&fs, "A/f").ino, libc::O_RDONLY).unwrap().fh;
    assert_eq!(fs.read(fh, 0, 10).await.unwrap_err().errno(), libc::EIO);
}

/// A file "A/f" whose first 200 bytes were just read and timed out: the content, the
/// filesystem, the file's bytes and the open handle.
async fn after_a_read_timed_out() -> (Arc<MemContent>, Filesystem, Bytes, u64) {
    let content = Arc::new(MemContent::default());
    let (entry, stream) = torrent(1, "A", &[(&["f"], 300)]);
    content.set(vec![(entry, stream.clone())]);
    content.behave(TorrentId(1), Behaviour::Hang);
    let config = FsConfig {
        read_timeout: Some(Duration::from_millis(50)),
        ..FsConfig::default()
    };
    let fs = Filesystem::new(content.clone(), config);
    let fh = fs.open(resolve(&fs, "A/f").ino, libc::O_RDONLY).unwrap().fh;
    assert_eq!(fs.read(fh, 0, 200).await.unwrap_err().errno(), libc::EIO);
    (content, fs, stream, fh)
}

#[tokio::test]
async fn the_retry_of_a_read_that_timed_out_fails_at_once() {
    let (content, fs, stream, fh) = after_a_read_timed_out().await;
    let asked = content.state.lock().unwrap().reads.len();
    // The data would now come, but the kernel's retry of part of the failed range gets
    // the failure without asking the content (and so without a second wait).
    content.behave(TorrentId(1), Behaviour::Serve);
    assert_eq!(fs.read(fh, 100, 50).await.unwrap_err().errno(), libc::EIO);
    assert_eq!(content.state.lock().unwrap().reads.len(), asked);
    // So does another reader's: it waited on the same pages and reads them again.
    let other = fs.open(resolve(&fs, "A/f").ino, libc::O_RDONLY).unwrap().fh;
    assert_eq!(
        fs.read(other, 100, 50).await.unwrap_err().errno(),
        libc::EIO
    );
    assert_eq!(content.state.lock().unwrap().reads.len(), asked);
    // A range the failure did not cover reads normally, and so does the failed one
    // once the memory of it is gone.
    assert_eq!(fs.read(fh, 150, 100).await.unwrap(), stream.slice(150..250));
    tokio::time::sleep(filesystem::RETRY_FAIL_TTL).await;
    assert_eq!(
        fs.read(other, 100, 50).await.unwrap(),
        stream.slice(100..150)
    );
}

#[tokio::test]
async fn a_failed_range_that_has_arrived_since_reads_at_once() {
    let (content, fs, stream, fh) = after_a_read_timed_out().await;
    // The download (or fetch) finished right after: no stale error for the rest of the
    // memory's life.
    content.behave(TorrentId(1), Behaviour::Serve);
    content.state.lock().unwrap().ready.insert(TorrentId(1));
    assert_eq!(fs.read(fh, 0, 200).await.unwrap(), stream.slice(0..200));
}

#[tokio::test]
async fn changes_apply_at_once_and_open_files_keep_reading() {
    let one = torrent(1, "One", &[(&["f"], 300)]);
    let stream = one.1.clone();
    let (content, fs) = fs_over(vec![one.clone()]);
    let f = resolve(&fs, "One/f");
    let fh = fs.open(f.ino, libc::O_RDONLY).unwrap().fh;

    content.set(vec![one.clone(), torrent(2, "Two", &[(&["g"], 5)])]);
    assert_eq!(resolve(&fs, "Two/g").size_bytes, 5);
    assert_eq!(resolve(&fs, "One/f").ino, f.ino);

    // Removing the torrent hides it at once, inside too, but an open handle keeps its
    // mapping.
    content.set(Vec::new());
    assert_eq!(
        fs.lookup(InodeNo::ROOT, OsStr::new("One"))
            .unwrap_err()
            .errno(),
        libc::ENOENT
    );
    assert_eq!(fs.getattr(f.ino).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(fs.readdir(InodeNo::ROOT, 0, 10).unwrap().len(), 2);
    // The content no longer knows it either: ENOENT rather than wrong bytes.
    assert_eq!(fs.read(fh, 0, 4).await.unwrap_err().errno(), libc::ENOENT);
    content.set(vec![one]);
    assert_eq!(fs.read(fh, 0, 4).await.unwrap(), stream.slice(0..4));
    assert_eq!(resolve(&fs, "One/f").ino, f.ino);
}

#[test]
fn changes_are_queued_for_the_kernel() {
    let (content, fs) = fs_over(vec![torrent(1, "One", &[(&["f"], 3)])]);
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    fs.set_invalidator(Some(Arc::new(move |batch: Vec<Invalidation>| {
        for inv in batch {
            tx.lock().unwrap().send(inv).unwrap();
        }
    })));
    let f = resolve(&fs, "One/f").ino;
    content.set(vec![torrent(1, "One", &[(&["f"], 3)])]);
    assert!(
        rx.try_recv().is_err(),
        "an unchanged torrent invalidates nothing"
    );
    content.set(vec![torrent(2, "Two", &[(&["g"], 3)])]);
    let got: Vec<Invalidation> = rx.try_iter().collect();
    let entry = |n: &str| Invalidation::Entry {
        parent: InodeNo::ROOT,
        name: n.to_string(),
    };
    assert!(got.contains(&entry("One")), "{got:?}");
    assert!(got.contains(&entry("Two")), "{got:?}");
    assert!(got.contains(&Invalidation::Inode(InodeNo::ROOT)));
    assert!(got.contains(&Invalidation::Inode(f)));
    // After the mount ends nothing is queued.
    fs.set_invalidator(None);
    content.set(Vec::new());
    assert!(fs.tree().torrent_count() == 0);
}

#[test]
fn a_sink_outliving_its_filesystem_is_dropped() {
    let (content, fs) = fs_over(vec![torrent(1, "One", &[(&["f"], 3)])]);
    assert_eq!(content.state.lock().unwrap().sinks.len(), 1);
    drop(fs);
    content.set(vec![torrent(2, "Two", &[(&["g"], 3)])]);
    assert_eq!(content.state.lock().unwrap().sinks.len(), 0);
}

// ---- incremental tree ----

#[test]
fn adding_and_removing_torrents_touches_only_them() {
    let a = torrent(1, "A", &[(&["x", "1.flac"], 10), (&["2.flac"], 20)]);
    let b = torrent(2, "B", &[(&["3.flac"], 30)]);
    let mut tree = Tree::new();
    let ca = tree.upsert(&a.0).unwrap();
    assert_eq!(ca.added, vec!["A".to_string()]);
    let before = paths(&tree);
    let cb = tree.upsert(&b.0).unwrap();
    assert_eq!((cb.added, cb.removed), (vec!["B".to_string()], vec![]));
    assert_eq!(tree.file_bytes(), 60);
    assert_eq!(tree.upsert(&b.0), None, "the same entry again is no change");
    // A's nodes are untouched by B coming and going.
    let removed = tree.remove(TorrentId(2)).unwrap();
    assert_eq!(removed.removed, vec!["B".to_string()]);
    assert_eq!(removed.stale.len(), 2);
    assert_eq!(paths(&tree), before);
    assert_eq!(tree.file_bytes(), 30);
    assert_eq!(tree.remove(TorrentId(2)), None);
    // An incremental tree equals one built at once from the same torrents.
    tree.upsert(&b.0);
    let built = Tree::build(&entries(&[b.clone(), a.clone()]));
    assert_eq!(paths(&tree), paths(&built));
    assert_eq!(tree.inode_count(), built.inode_count());
    let root = tree.get(InodeNo::ROOT).unwrap().as_dir().unwrap();
    assert_eq!((root.entries, root.subdirs), (2, 2));
    assert_eq!(
        tree.torrent_of(paths(&tree)["A/x/1.flac"]),
        Some(TorrentId(1))
    );
    assert_eq!(tree.torrent_of(paths(&tree)["B"]), Some(TorrentId(2)));
    assert_eq!(tree.torrent_of(InodeNo::ROOT), None);
}

#[test]
fn colliding_torrent_names_stay_stable_while_others_come_and_go() {
    let first = torrent(7, "Same", &[(&["a"], 1)]);
    let second = torrent(3, "Same", &[(&["b"], 1)]);
    let third = torrent(5, "Same", &[(&["c"], 1)]);
    let mut tree = Tree::new();
    tree.upsert(&first.0);
    // A newcomer never takes a name already shown, even with a smaller id.
    assert_eq!(tree.upsert(&second.0).unwrap().added, vec!["Same (2)"]);
    assert_eq!(tree.upsert(&third.0).unwrap().added, vec!["Same (3)"]);
    let p = paths(&tree);
    assert!(
        p.contains_key("Same/a") && p.contains_key("Same (2)/b"),
        "{p:?}"
    );
    // Removing the first renames no one; the next newcomer takes the free name.
    tree.remove(TorrentId(7));
    let p = paths(&tree);
    assert!(
        p.contains_key("Same (2)/b") && p.contains_key("Same (3)/c"),
        "{p:?}"
    );
    assert!(!p.contains_key("Same"));
    assert_eq!(tree.upsert(&first.0).unwrap().added, vec!["Same"]);
    // The inodes are the same as before: a pure function of identity.
    let rebuilt = paths(&Tree::build(&entries(&[first, second, third])));
    let now = paths(&tree);
    let ino_of = |p: &HashMap<String, InodeNo>, suffix: &str| {
        *p.iter().find(|(k, _)| k.ends_with(suffix)).unwrap().1
    };
    for f in ["/a", "/b", "/c"] {
        assert_eq!(ino_of(&now, f), ino_of(&rebuilt, f));
    }
}

#[test]
fn a_changed_entry_replaces_the_subtree_and_keeps_its_name() {
    let (mut t, _) = torrent(1, "Album", &[(&["a.flac"], 10)]);
    let other = torrent(2, "Album", &[(&["z"], 1)]);
    let mut tree = Tree::new();
    tree.upsert(&t);
    tree.upsert(&other.0);
    let old_a = paths(&tree)["Album/a.flac"];
    t.files.push(FileEntry {
        path: vec!["b.flac".into()],
        stream_offset: 10,
        len: 5,
        pad: false,
        mtime: 0,
    });
    let change = tree.upsert(&t).unwrap();
    assert!(change.removed.is_empty(), "{change:?}");
    assert!(change.stale.contains(&old_a));
    let p = paths(&tree);
    assert_eq!(p["Album/a.flac"], old_a);
    assert!(
        p.contains_key("Album/b.flac") && p.contains_key("Album (2)/z"),
        "{p:?}"
    );
    // Renamed: the old name goes, the new one comes.
    t.name = "Better".into();
    let change = tree.upsert(&t).unwrap();
    assert_eq!(
        (change.removed, change.added),
        (vec!["Album".into()], vec!["Better".into()])
    );
    assert!(paths(&tree).contains_key("Better/b.flac"));
}

#[test]
fn root_listing_offsets_survive_changes() {
    let all: Vec<_> = (1..=6)
        .map(|i| torrent(i, &format!("T{i}"), &[(&["f"], 1)]).0)
        .collect();
    let mut tree = Tree::build(&all);
    let first = tree.list(InodeNo::ROOT, 0, 4).unwrap();
    let names: Vec<&str> = first.iter().map(|e| e.1).collect();
    assert_eq!(names, [".", "..", "T1", "T2"]);
    let resume = first[3].0;
    // T1 (already listed) goes and T7 comes: the rest of the listing is T3…T7, none
    // repeated or skipped.
    tree.remove(TorrentId(1));
    tree.upsert(&torrent(7, "T7", &[(&["f"], 1)]).0);
    let rest: Vec<String> = tree
        .list(InodeNo::ROOT, resume, 100)
        .unwrap()
        .iter()
        .map(|e| e.1.to_string())
        .collect();
    assert_eq!(rest, ["T3", "T4", "T5", "T6", "T7"]);
}

#[test]
fn a_tree_in_a_file_is_the_tree_on_the_heap_through_removals_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<TorrentEntry> = (1..=40)
        .map(|i| {
            torrent(
                i,
                &format!("Album {}", i % 7),
                &[
                    (&["CD1", "01.flac"], 10),
                    (&["CD1", "02.flac"], 20),
                    (&["cover.jpg"], 3),
                ],
            )
            .0
        })
        .collect();
    let mut mapped = Tree::in_dir(dir.path());
    mapped.set_compact_at(1);
    let mut heap = Tree::new();
    for t in &all {
        mapped.upsert(t);
        heap.upsert(t);
    }
    assert_eq!(paths(&mapped), paths(&heap));
    // Removing most of them makes the file mostly garbage: the records are copied into
    // a fresh file, and what is left reads the same.
    let mut compactions = 0;
    for id in 1..=30 {
        assert_eq!(mapped.remove(TorrentId(id)), heap.remove(TorrentId(id)));
        compactions += usize::from(mapped.garbage_bytes() == 0);
    }
    assert!(
        compactions > 0,
        "garbage above live, and the threshold, compacts"
    );
    let after = paths(&mapped);
    assert_eq!(after, paths(&heap));
    assert_eq!(after.len(), 10 * 5, "10 albums of dir, CD1 and 3 files");
    assert_eq!(mapped.file_bytes(), 10 * 33);
    assert_eq!(mapped.inode_count(), heap.inode_count());
    // Ids 3, 10, 17, 24, 31, 38 asked for "Album 3": the last got the sixth name.
    let n = mapped.lookup(InodeNo::ROOT, "Album 3 (6)").unwrap();
    let cd = mapped.lookup(n.ino, "CD1").unwrap();
    let f = mapped.lookup(cd.ino, "02.flac").unwrap().as_file().unwrap();
    assert_eq!((f.len_bytes, f.torrent), (20, TorrentId(38)));
    // Nothing of it has a name in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
