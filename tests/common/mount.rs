//! Test helpers for the FUSE mount: a [`Content`] over real files in a temporary
//! directory (with per-torrent switches to stall or fail reads), builders for torrents
//! with given (possibly hostile) paths, and a guard that always unmounts.
//!
//! The content stream of a test torrent is its files' bytes back to back, pad files
//! as zeros, read from disk on every `read`: what the mount shows must equal what is in
//! the source files.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bae::fs::{
    is_fuse_mount, mount, Content, ContentError, ContentEvent, ContentSink, FileEntry, MountHandle,
    MountOptions, Subscribers, TorrentEntry,
};
use bae::model::TorrentId;
use bytes::Bytes;
use tokio::sync::watch;

/// Where a piece of a test torrent's stream comes from.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Pad,
}

#[derive(Clone, Debug)]
pub struct TestTorrent {
    pub entry: TorrentEntry,
    pub sources: Vec<Source>,
}

impl TestTorrent {
    /// The source file of the `index`-th file.
    pub fn source(&self, index: usize) -> &Path {
        match &self.sources[index] {
            Source::File(p) => p,
            Source::Pad => panic!("file {index} is a pad file"),
        }
    }
}

/// Builds a torrent whose files are fresh random files under `src_dir`.
pub struct TorrentBuilder {
    id: i64,
    name: String,
    src_dir: PathBuf,
    files: Vec<FileEntry>,
    sources: Vec<Source>,
    offset: u64,
}

impl TorrentBuilder {
    pub fn new(src_dir: &Path, id: i64, name: &str) -> Self {
        TorrentBuilder {
            id,
            name: name.to_string(),
            src_dir: src_dir.to_path_buf(),
            files: Vec::new(),
            sources: Vec::new(),
            offset: 0,
        }
    }

    /// A file at raw torrent path `path` with `len` random bytes and mtime `mtime`.
    pub fn file(self, path: &[&str], len: u64, mtime: i64) -> Self {
        let index = self.files.len();
        let source = self.src_dir.join(format!("t{}-f{index}", self.id));
        // Pseudo-random, distinct per file, and fast even in debug builds.
        let mut bytes = vec![0u8; len as usize];
        blake3::Hasher::new()
            .update(&self.id.to_le_bytes())
            .update(&(index as u64).to_le_bytes())
            .finalize_xof()
            .fill(&mut bytes);
        fs::write(&source, &bytes).unwrap();
        self.push(path, len, false, mtime, Source::File(source))
    }

    pub fn pad(self, len: u64) -> Self {
        let index = self.files.len();
        self.push(&[".pad", &index.to_string()], len, true, 0, Source::Pad)
    }

    fn push(mut self, path: &[&str], len: u64, pad: bool, mtime: i64, source: Source) -> Self {
        self.files.push(FileEntry {
            path: path.iter().map(|s| s.to_string()).collect(),
            stream_offset: self.offset,
            len,
            pad,
            mtime,
        });
        self.sources.push(source);
        self.offset += len;
        self
    }

    pub fn build(self) -> TestTorrent {
        TestTorrent {
            entry: TorrentEntry {
                id: TorrentId(self.id),
                name: self.name,
                added_at: 1_650_000_000 + self.id,
                info_hash: format!("{:040x}", self.id),
                files: self.files,
            },
            sources: self.sources,
        }
    }
}

#[derive(Default)]
struct State {
    sinks: Subscribers,
    torrents: Vec<TestTorrent>,
}

/// A [`Content`] over real files. Reads of a gated torrent wait until its gate opens
/// (and fail if the gate is dropped); reads of a failing torrent return an integrity
/// error.
#[derive(Default)]
pub struct DiskContent {
    state: Mutex<State>,
    gates: Mutex<HashMap<TorrentId, watch::Receiver<bool>>>,
    failing: Mutex<HashSet<TorrentId>>,
    pub prefetches: Mutex<Vec<(TorrentId, Range<u64>)>>,
    /// Every range asked of `read`, in order of arrival.
    pub reads: Mutex<Vec<(TorrentId, Range<u64>)>>,
}

/// Holding this keeps a gated torrent's reads waiting; `open()` lets them through.
pub struct Gate(watch::Sender<bool>);

impl Gate {
    pub fn open(&self) {
        let _ = self.0.send(true);
    }
}

impl DiskContent {
    pub fn new(torrents: Vec<TestTorrent>) -> Arc<Self> {
        let c = DiskContent::default();
        c.set(torrents);
        Arc::new(c)
    }

    /// Replaces the torrent set, telling the mount what went and what is there.
    pub fn set(&self, torrents: Vec<TestTorrent>) {
        let mut s = self.state.lock().unwrap();
        for old in &s.torrents {
            if !torrents.iter().any(|t| t.entry.id == old.entry.id) {
                s.sinks.publish(ContentEvent::Removed(old.entry.id));
            }
        }
        for t in &torrents {
            s.sinks.publish(ContentEvent::Upsert(t.entry.clone()));
        }
        s.torrents = torrents;
    }

    pub fn gate(&self, t: TorrentId) -> Gate {
        let (tx, rx) = watch::channel(false);
        self.gates.lock().unwrap().insert(t, rx);
        Gate(tx)
    }

    pub fn fail(&self, t: TorrentId) {
        self.failing.lock().unwrap().insert(t);
    }

    fn torrent(&self, t: TorrentId) -> Option<TestTorrent> {
        let s = self.state.lock().unwrap();
        s.torrents.iter().find(|x| x.entry.id == t).cloned()
    }
}

/// The bytes `range` of `t`'s stream, read from its source files.
fn read_stream(t: &TestTorrent, range: Range<u64>) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; (range.end - range.start) as usize];
    for (f, source) in t.entry.files.iter().zip(&t.sources) {
        let start = range.start.max(f.stream_offset);
        let end = range.end.min(f.stream_offset + f.len);
        if start >= end {
            continue;
        }
        let dst = &mut out[(start - range.start) as usize..(end - range.start) as usize];
        match source {
            Source::File(p) => File::open(p)?.read_exact_at(dst, start - f.stream_offset)?,
            Source::Pad => dst.fill(0),
        }
    }
    Ok(out)
}

#[async_trait]
impl Content for DiskContent {
    fn subscribe(&self, sink: Arc<dyn ContentSink>) {
        let s = self.state.lock().unwrap();
        let current: Vec<TorrentEntry> = s.torrents.iter().map(|t| t.entry.clone()).collect();
        s.sinks.subscribe(sink, current);
    }

    async fn read(&self, t: TorrentId, range: Range<u64>) -> Result<Bytes, ContentError> {
        self.reads.lock().unwrap().push((t, range.clone()));
        let gate = self.gates.lock().unwrap().get(&t).cloned();
        if let Some(mut gate) = gate {
            gate.wait_for(|open| *open)
                .await
                .map_err(|_| ContentError::Unavailable("gate dropped".into()))?;
        }
        if self.failing.lock().unwrap().contains(&t) {
            return Err(ContentError::Integrity("test: piece hash mismatch".into()));
        }
        let torrent = self.torrent(t).ok_or(ContentError::NotFound)?;
        let bytes = tokio::task::spawn_blocking(move || read_stream(&torrent, range))
            .await
            .map_err(|e| ContentError::Unavailable(e.to_string()))?
            .map_err(|e| ContentError::Unavailable(e.to_string()))?;
        Ok(Bytes::from(bytes))
    }

    fn prefetch(&self, t: TorrentId, range: Range<u64>) {
        self.prefetches.lock().unwrap().push((t, range));
    }
}

/// A mount in a fresh temporary directory, unmounted on drop even if the test panics:
/// the handle's own unmount first, then `fusermount3 -u`, then `fusermount3 -uz`.
pub struct Mounted {
    pub handle: Option<MountHandle>,
    pub content: Arc<DiskContent>,
    mountpoint: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mounted {
    pub fn new(content: Arc<DiskContent>) -> Self {
        Self::with_options(content, MountOptions::default())
    }

    pub fn with_options(content: Arc<DiskContent>, options: MountOptions) -> Self {
        assert!(
            Path::new("/dev/fuse").exists(),
            "these tests need /dev/fuse and root (a real kernel FUSE mount)"
        );
        let dir = tempfile::tempdir().unwrap();
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        let handle = mount(content.clone(), &mountpoint, options).expect("mount");
        Mounted {
            handle: Some(handle),
            content,
            mountpoint,
            _dir: dir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        drop(self.handle.take());
        for flag in ["-u", "-uz"] {
            if !is_fuse_mount(&self.mountpoint) {
                return;
            }
            let _ = Command::new("fusermount3")
                .arg(flag)
                .arg(&self.mountpoint)
                .status();
        }
    }
}
