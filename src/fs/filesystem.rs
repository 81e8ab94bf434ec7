//! The read-only filesystem itself, independent of the kernel: every FUSE operation the
//! mount supports is a method here, taking plain values and returning plain values or
//! an [`FsError`]. The adapter in [`fuse`](super::fuse) only translates.
//!
//! - The tree is rebuilt when the content's snapshot generation changes; that is checked
//!   on operations on the root (lookup in, getattr of, readdir of the root), which is
//!   how anyone reaches a new torrent. Inode numbers survive rebuilds (see [`tree`]).
//! - An open file handle remembers its file's place in the content stream, so a read
//!   needs no tree and keeps working across rebuilds.
//! - Reads map file bytes to stream bytes, never past the end of the file, and feed the
//!   handle's [`ReadAhead`] to prefetch what a sequential reader will want next.
//! - A read that failed after waiting (timed out, data unavailable) is remembered for
//!   [`RETRY_FAIL_TTL`]: the kernel answers a failed read-ahead by reading the same
//!   pages again, one at a time, and that retry fails at once with the same error
//!   instead of waiting a second full timeout. So a reader waits at most the
//!   configured timeout. Failures that come fast (not found, integrity) are not
//!   remembered.
//!
//! Locks (never held across an `.await`, never two at once except as listed):
//! `rebuild` → `tree` (a rebuild swaps the tree while holding both); `handles` and each
//! handle's `readahead` and `failed` are taken alone.
//!
//! [`tree`]: super::tree

use std::collections::HashMap;
use std::ffi::OsStr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::model::CHUNK_LEN;

use super::content::{Content, ContentError};
use super::error::FsError;
use super::readahead::ReadAhead;
use super::tree::{FileRef, InodeNo, Node, NodeKind, Tree};

/// Tunables of the filesystem logic.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// How long the kernel may cache attributes and directory entries.
    pub attr_ttl: Duration,
    /// A backstop on [`Content::read`]: past it the read fails with `EIO`. `None` trusts
    /// the content's own bound.
    pub read_timeout: Option<Duration>,
    /// Largest read-ahead window of a sequential reader.
    pub max_readahead_bytes: u64,
    /// Owner shown on every inode.
    pub uid: u32,
    pub gid: u32,
}

impl Default for FsConfig {
    fn default() -> Self {
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        FsConfig {
            attr_ttl: Duration::from_secs(1),
            read_timeout: None,
            max_readahead_bytes: 16 * CHUNK_LEN,
            uid,
            gid,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
}

/// What `stat` shows for an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: InodeNo,
    pub kind: EntryKind,
    pub size_bytes: u64,
    /// Unix seconds.
    pub mtime: i64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One entry of a directory listing; `next_offset` is where the listing resumes after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub next_offset: u64,
    pub attr: Attr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Whether the kernel may keep pages cached from earlier opens (file complete).
    pub keep_cache: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub files: u64,
    pub block_size: u32,
    pub name_max_bytes: u32,
}

/// Block size reported by `statfs`.
const STATFS_BLOCK_BYTES: u64 = 4096;

/// Bytes prefetched at each end of a file on open: tags and cover art live there.
const OPEN_PREFETCH_BYTES: u64 = CHUNK_LEN;

/// How long a failed read range fails again at once (see the module comment). Short:
/// the kernel retries within milliseconds, and a reader that tries again later should
/// get a fresh wait.
pub const RETRY_FAIL_TTL: Duration = Duration::from_secs(3);

struct Handle {
    file: FileRef,
    readahead: Mutex<ReadAhead>,
    /// Recent failed reads of this handle: stream range, when, and why. A few, since
    /// read-ahead requests for neighbouring windows fail together.
    failed: Mutex<Vec<(Range<u64>, Instant, ContentError)>>,
}

/// Most failed reads a handle remembers.
const MAX_REMEMBERED_FAILURES: usize = 8;

impl Handle {
    /// The error of a recent failed read covering `range`, if any.
    fn recent_failure(&self, range: &Range<u64>) -> Option<ContentError> {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.retain(|(_, at, _)| at.elapsed() < RETRY_FAIL_TTL);
        failed
            .iter()
            .find(|(r, _, _)| r.start <= range.start && range.end <= r.end)
            .map(|(_, _, e)| e.clone())
    }

    fn remember_failure(&self, range: Range<u64>, e: &ContentError) {
        if !matches!(e, ContentError::Timeout | ContentError::Unavailable(_)) {
            return;
        }
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.len() >= MAX_REMEMBERED_FAILURES {
            failed.remove(0);
        }
        failed.push((range, Instant::now(), e.clone()));
    }
}

/// The filesystem over one [`Content`].
pub struct Filesystem {
    content: Arc<dyn Content>,
    config: FsConfig,
    tree: RwLock<Arc<Tree>>,
    /// Serialises rebuilds so a burst of root operations builds one tree.
    rebuild: Mutex<()>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
}

impl std::fmt::Debug for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filesystem")
            .field("generation", &self.tree().generation())
            .field("open_handles", &self.open_handles())
            .finish_non_exhaustive()
    }
}

impl Filesystem {
    pub fn new(content: Arc<dyn Content>, config: FsConfig) -> Self {
        let (generation, torrents) = content.snapshot();
        let tree = Tree::build(generation, &torrents);
        Filesystem {
            content,
            config,
            tree: RwLock::new(Arc::new(tree)),
            rebuild: Mutex::new(()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// The current tree, without checking for changes.
    pub fn tree(&self) -> Arc<Tree> {
        Arc::clone(&self.tree.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The current tree, rebuilt first if the content's generation moved on.
    pub fn refreshed_tree(&self) -> Arc<Tree> {
        let current = self.tree();
        if self.content.generation() == current.generation() {
            return current;
        }
        let _rebuilding = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.tree();
        let (generation, torrents) = self.content.snapshot();
        if generation == current.generation() {
            return current;
        }
        let fresh = Arc::new(Tree::build(generation, &torrents));
        tracing::debug!(
            generation,
            torrents = torrents.len(),
            "rebuilt the mount tree"
        );
        *self.tree.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&fresh);
        fresh
    }

    fn tree_for(&self, ino: InodeNo) -> Arc<Tree> {
        if ino == InodeNo::ROOT {
            self.refreshed_tree()
        } else {
            self.tree()
        }
    }

    pub fn lookup(&self, parent: InodeNo, name: &OsStr) -> Result<Attr, FsError> {
        let tree = self.tree_for(parent);
        // Every name in the tree is UTF-8; anything else cannot exist.
        let name = name.to_str().ok_or(FsError::NotFound)?;
        Ok(self.attr_of(tree.lookup(parent, name)?))
    }

    pub fn getattr(&self, ino: InodeNo) -> Result<Attr, FsError> {
        let tree = self.tree_for(ino);
        Ok(self.attr_of(tree.get(ino).ok_or(FsError::NotFound)?))
    }

    pub fn opendir(&self, ino: InodeNo) -> Result<(), FsError> {
        let tree = self.tree_for(ino);
        tree.get(ino)
            .ok_or(FsError::NotFound)?
            .as_dir()
            .ok_or(FsError::NotDir)?;
        Ok(())
    }

    /// Up to `max_entries` entries of directory `ino` from `offset` on (0 = from the
    /// start): `.`, `..`, then the children by name. Empty at the end.
    pub fn readdir(
        &self,
        ino: InodeNo,
        offset: u64,
        max_entries: usize,
    ) -> Result<Vec<DirEntry>, FsError> {
        let tree = self.tree_for(ino);
        let node = tree.get(ino).ok_or(FsError::NotFound)?;
        let dir = node.as_dir().ok_or(FsError::NotDir)?;
        let parent = tree.get(node.parent).ok_or(FsError::NotFound)?;
        let dots = [(".", node), ("..", parent)];
        let children = dir
            .children
            .iter()
            .filter_map(|(name, ino)| Some((name.as_str(), tree.get(*ino)?)));
        let skip = usize::try_from(offset).map_err(|_| FsError::Invalid("directory offset"))?;
        Ok(dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(skip)
            .take(max_entries)
            .map(|(i, (name, node))| DirEntry {
                name: name.to_string(),
                next_offset: i as u64 + 1,
                attr: self.attr_of(node),
            })
            .collect())
    }

    /// Opens file `ino` for reading (`flags` as given to `open(2)`). Writing is refused.
    /// Prefetches the first and last chunk of the file.
    pub fn open(&self, ino: InodeNo, flags: i32) -> Result<Opened, FsError> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_CREAT) != 0
        {
            return Err(FsError::ReadOnly);
        }
        let tree = self.tree_for(ino);
        let node = tree.get(ino).ok_or(FsError::NotFound)?;
        let file = *node.as_file().ok_or(FsError::IsDir)?;
        let len = file.len_bytes;
        if len > 0 {
            let head = file.stream_offset..file.stream_offset + len.min(OPEN_PREFETCH_BYTES);
            self.content.prefetch(file.torrent, head);
            if len > OPEN_PREFETCH_BYTES {
                let tail_start = (len - OPEN_PREFETCH_BYTES).max(OPEN_PREFETCH_BYTES);
                self.content.prefetch(
                    file.torrent,
                    file.stream_offset + tail_start..file.stream_offset + len,
                );
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(Handle {
            file,
            readahead: Mutex::new(ReadAhead::default()),
            failed: Mutex::new(Vec::new()),
        });
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, handle);
        Ok(Opened {
            fh,
            keep_cache: self.content.is_complete(file.torrent),
        })
    }

    /// Up to `size` bytes of the open file `fh` from `offset`; fewer only at the end of
    /// the file. Waits as long as the content does (bounded by it, and by the
    /// configured backstop).
    pub async fn read(&self, fh: u64, offset: i64, size: u32) -> Result<Bytes, FsError> {
        let handle = self.handle(fh)?;
        let file = handle.file;
        let offset = u64::try_from(offset).map_err(|_| FsError::Invalid("negative read offset"))?;
        if offset >= file.len_bytes || size == 0 {
            return Ok(Bytes::new());
        }
        let end = offset.saturating_add(u64::from(size)).min(file.len_bytes);
        let range = file.stream_offset + offset..file.stream_offset + end;
        if let Some(e) = handle.recent_failure(&range) {
            tracing::debug!(torrent = %file.torrent, ?range, error = %e, "retry of a read that just failed");
            return Err(FsError::Content(e));
        }
        let ahead = handle
            .readahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_read(offset, end, file.len_bytes, self.config.max_readahead_bytes);
        if let Some(r) = ahead {
            self.content.prefetch(
                file.torrent,
                file.stream_offset + r.start..file.stream_offset + r.end,
            );
        }
        let read = self.content.read(file.torrent, range.clone());
        let result = match self.config.read_timeout {
            Some(limit) => tokio::time::timeout(limit, read)
                .await
                .unwrap_or(Err(ContentError::Timeout)),
            None => read.await,
        };
        let bytes = result.map_err(|e| {
            tracing::warn!(torrent = %file.torrent, file = file.index.0, ?range, error = %e, "read failed");
            handle.remember_failure(range.clone(), &e);
            FsError::Content(e)
        })?;
        let want = end - offset;
        if bytes.len() as u64 != want {
            tracing::error!(torrent = %file.torrent, ?range, got = bytes.len(), "content returned the wrong number of bytes");
            return Err(FsError::Content(ContentError::Integrity(format!(
                "{} bytes returned for a {want}-byte range",
                bytes.len()
            ))));
        }
        Ok(bytes)
    }

    pub fn release(&self, fh: u64) {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    /// Number of open file handles (for diagnostics and tests).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn statfs(&self) -> StatFs {
        let tree = self.tree();
        StatFs {
            blocks: tree.file_bytes().div_ceil(STATFS_BLOCK_BYTES),
            files: tree.inode_count(),
            block_size: STATFS_BLOCK_BYTES as u32,
            name_max_bytes: super::names::NAME_MAX_BYTES as u32,
        }
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>, FsError> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))
    }

    fn attr_of(&self, node: &Node) -> Attr {
        let (kind, size_bytes, perm, nlink) = match &node.kind {
            NodeKind::Dir(d) => (EntryKind::Dir, 0, 0o555, 2 + d.subdirs),
            NodeKind::File(f) => (EntryKind::File, f.len_bytes, 0o444, 1),
        };
        Attr {
            ino: node.ino,
            kind,
            size_bytes,
            mtime: node.mtime,
            perm,
            nlink,
            uid: self.config.uid,
            gid: self.config.gid,
        }
    }
}
