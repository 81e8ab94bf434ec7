//! The read-only filesystem itself, independent of the kernel: every FUSE operation the
//! mount supports is a method here, taking plain values and returning plain values or
//! an [`FsError`]. The adapter in [`fuse`](super::fuse) only translates.
//!
//! - The tree lives in memory and follows the content's events one torrent at a time
//!   (the fs is the content's [`ContentSink`]); no operation asks the content for the
//!   set of torrents or waits on it. Each change is passed on as [`Invalidation`]s to
//!   the [`Invalidator`] (the mount's notifier thread) before the event returns, so
//!   once a change is made the kernel shows it, whatever the attribute TTL.
//! - An open file handle remembers its file's place in the content stream, so a read
//!   needs no tree and keeps working after its torrent changed or went.
//! - Reads map file bytes to stream bytes, never past the end of the file, and feed the
//!   handle's [`ReadAhead`] to prefetch what a sequential reader will want next.
//! - A read that failed after waiting (timed out, data unavailable) is remembered for
//!   [`RETRY_FAIL_TTL`], for every handle of its torrent: the kernel answers a failed
//!   read-ahead by reading the same pages again, one at a time, and a second reader
//!   that waited on the same pages (locked by the first one's request) reads them
//!   again through its own handle. Those retries fail at once with the same error
//!   instead of waiting a second full timeout, so a reader waits at most the configured
//!   timeout, unless the range has arrived since. Failures that come fast (not found,
//!   integrity) are not remembered.
//! - The kernel may keep a file's pages across opens whether or not its torrent is
//!   complete: a page only ever holds verified bytes, and an inode number names one
//!   content (see [`tree`](super::tree)). Dropping them at each open would also make
//!   `open` wait for every read in flight on the file.
//!
//! Locks (never held across an `.await` or a call into the content, never two at once):
//! `tree`, `invalidator` (cloned out, then called with no lock of ours held: the
//! kernel may wait for a request on the root that needs `tree`), `handles`, `failed`,
//! and each handle's `readahead`. The content calls in with its own lock held, so
//! that lock comes before all of ours, and requests never take it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::model::{TorrentId, CHUNK_LEN};

use super::content::{Content, ContentError, ContentEvent, ContentSink};
use super::error::FsError;
use super::readahead::ReadAhead;
use super::tree::{Change, FileRef, InodeNo, Node, NodeKind, Tree};

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
    /// Permission bits of files and of directories.
    pub file_perm: u16,
    pub dir_perm: u16,
    /// Where the tree keeps its records (an unlinked file; see
    /// [`image`](super::image)); `None` keeps them on the heap.
    pub tree_dir: Option<PathBuf>,
}

/// Default attribute and entry TTL. Long: every change of the tree is pushed to the
/// kernel as an invalidation, and torrents are immutable otherwise.
pub const DEFAULT_ATTR_TTL: Duration = Duration::from_secs(300);

impl Default for FsConfig {
    fn default() -> Self {
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        FsConfig {
            attr_ttl: DEFAULT_ATTR_TTL,
            read_timeout: None,
            max_readahead_bytes: 16 * CHUNK_LEN,
            uid,
            gid,
            file_perm: 0o444,
            dir_perm: 0o555,
            tree_dir: None,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub files: u64,
    pub block_size: u32,
    pub name_max_bytes: u32,
}

/// Verified fraction of the torrent's bytes, `0.0000` to `1.0000`.
pub const XATTR_PROGRESS: &str = "user.bae.progress";
/// Bytes of the torrent held in the local cache.
pub const XATTR_CACHED: &str = "user.bae.cached";
/// The torrent's info hash, hex.
pub const XATTR_INFOHASH: &str = "user.bae.infohash";
/// Every extended attribute of a node inside a torrent.
pub const XATTRS: [&str; 3] = [XATTR_PROGRESS, XATTR_CACHED, XATTR_INFOHASH];

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
}

/// Most failed reads remembered at once (the oldest is forgotten first): a few per
/// reader, since read-ahead requests for neighbouring windows fail together.
const MAX_REMEMBERED_FAILURES: usize = 64;

/// Recent failed reads: torrent, stream range, when, and why.
#[derive(Default)]
struct Failures(std::collections::VecDeque<(TorrentId, Range<u64>, Instant, ContentError)>);

impl Failures {
    /// The error of a recent failed read of `t` covering `range`, if any.
    fn covering(&mut self, t: TorrentId, range: &Range<u64>) -> Option<ContentError> {
        self.0.retain(|(_, _, at, _)| at.elapsed() < RETRY_FAIL_TTL);
        self.0
            .iter()
            .find(|(ft, r, _, _)| *ft == t && r.start <= range.start && range.end <= r.end)
            .map(|(_, _, _, e)| e.clone())
    }

    fn remember(&mut self, t: TorrentId, range: Range<u64>, e: &ContentError) {
        if !matches!(e, ContentError::Timeout | ContentError::Unavailable(_)) {
            return;
        }
        if self.0.len() >= MAX_REMEMBERED_FAILURES {
            self.0.pop_front();
        }
        self.0.push_back((t, range, Instant::now(), e.clone()));
    }
}

/// A kernel cache entry that a change made wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// The directory entry `name` in `parent`.
    Entry { parent: InodeNo, name: String },
    /// An inode's attributes (and, for a directory, its listing).
    Inode(InodeNo),
}

/// Tells the kernel about a batch of [`Invalidation`]s, returning once they are
/// delivered (or a bounded wait passed). Called with no lock of the filesystem held.
pub type Invalidator = Arc<dyn Fn(Vec<Invalidation>) + Send + Sync>;

/// What the filesystem and its content sink share.
struct Shared {
    tree: RwLock<Tree>,
    invalidator: Mutex<Option<Invalidator>>,
}

impl Shared {
    fn apply(&self, event: ContentEvent) {
        let change = {
            let mut tree = self.tree.write().unwrap_or_else(|p| p.into_inner());
            match &event {
                ContentEvent::Upsert(t) => tree.upsert(t),
                ContentEvent::Removed(id) => tree.remove(*id),
            }
        };
        if let Some(change) = change {
            tracing::debug!(?change, "mount tree changed");
            self.invalidate(change);
        }
    }

    fn invalidate(&self, change: Change) {
        let Some(tell) = self
            .invalidator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return;
        };
        let entries = change.removed.into_iter().chain(change.added);
        let batch = entries
            .map(|name| Invalidation::Entry {
                parent: InodeNo::ROOT,
                name,
            })
            .chain(std::iter::once(Invalidation::Inode(InodeNo::ROOT)))
            .chain(change.stale.into_iter().map(Invalidation::Inode))
            .collect();
        tell(batch);
    }
}

/// The filesystem as its content's event sink. Weak, so that a content outliving its
/// mount does not keep the tree alive.
struct Sink(Weak<Shared>);

impl ContentSink for Sink {
    fn apply(&self, event: ContentEvent) -> bool {
        match self.0.upgrade() {
            Some(shared) => {
                shared.apply(event);
                true
            }
            None => false,
        }
    }
}

/// The filesystem over one [`Content`].
pub struct Filesystem {
    content: Arc<dyn Content>,
    config: FsConfig,
    shared: Arc<Shared>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    failed: Mutex<Failures>,
    next_fh: AtomicU64,
}

impl std::fmt::Debug for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filesystem")
            .field("torrents", &self.tree().torrent_count())
            .field("open_handles", &self.open_handles())
            .finish_non_exhaustive()
    }
}

impl Filesystem {
    pub fn new(content: Arc<dyn Content>, config: FsConfig) -> Self {
        let shared = Arc::new(Shared {
            tree: RwLock::new(match &config.tree_dir {
                Some(dir) => Tree::in_dir(dir),
                None => Tree::new(),
            }),
            invalidator: Mutex::new(None),
        });
        content.subscribe(Arc::new(Sink(Arc::downgrade(&shared))));
        Filesystem {
            content,
            config,
            shared,
            handles: Mutex::new(HashMap::new()),
            failed: Mutex::new(Failures::default()),
            next_fh: AtomicU64::new(1),
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    /// The current tree, read-locked: hold it briefly, and never across a call into
    /// the content.
    pub fn tree(&self) -> RwLockReadGuard<'_, Tree> {
        self.shared.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Who tells the kernel about changes from now on (`None`: nobody).
    pub fn set_invalidator(&self, tell: Option<Invalidator>) {
        *self
            .shared
            .invalidator
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = tell;
    }

    pub fn lookup(&self, parent: InodeNo, name: &OsStr) -> Result<Attr, FsError> {
        let tree = self.tree();
        // Every name in the tree is UTF-8; anything else cannot exist.
        let name = name.to_str().ok_or(FsError::NotFound)?;
        Ok(self.attr_of(tree.lookup(parent, name)?))
    }

    pub fn getattr(&self, ino: InodeNo) -> Result<Attr, FsError> {
        let tree = self.tree();
        Ok(self.attr_of(tree.get(ino).ok_or(FsError::NotFound)?))
    }

    pub fn opendir(&self, ino: InodeNo) -> Result<(), FsError> {
        let tree = self.tree();
        tree.get(ino)
            .ok_or(FsError::NotFound)?
            .as_dir()
            .ok_or(FsError::NotDir)?;
        Ok(())
    }

    /// Up to `max_entries` entries of directory `ino` from `offset` on (0 = from the
    /// start): `.`, `..`, then the children (see [`Tree::list`]). Empty at the end.
    pub fn readdir(
        &self,
        ino: InodeNo,
        offset: u64,
        max_entries: usize,
    ) -> Result<Vec<DirEntry>, FsError> {
        let tree = self.tree();
        Ok(tree
            .list(ino, offset, max_entries)?
            .into_iter()
            .map(|(next_offset, name, node)| DirEntry {
                name: name.to_string(),
                next_offset,
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
        let file = {
            let tree = self.tree();
            let node = tree.get(ino).ok_or(FsError::NotFound)?;
            node.as_file().ok_or(FsError::IsDir)?
        };
        let len = file.len_bytes;
        if len > 0 {
            let head = file.stream_offset..file.stream_offset + len.min(OPEN_PREFETCH_BYTES);
            self.content.prefetch_next(file.torrent, head);
            if len > OPEN_PREFETCH_BYTES {
                let tail_start = (len - OPEN_PREFETCH_BYTES).max(OPEN_PREFETCH_BYTES);
                self.content.prefetch_stored(
                    file.torrent,
                    file.stream_offset + tail_start..file.stream_offset + len,
                );
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(Handle {
            file,
            readahead: Mutex::new(ReadAhead::default()),
        });
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, handle);
        Ok(Opened { fh })
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
        let failed = self.failures().covering(file.torrent, &range);
        if let Some(e) = failed.filter(|_| !self.content.readable_now(file.torrent, range.clone()))
        {
            tracing::debug!(torrent = %file.torrent, ?range, error = %e, "retry of a read that just failed");
            return Err(FsError::Content(e));
        }
        let window = self.config.max_readahead_bytes;
        // Near its end, a file's read-ahead runs on into the bytes that follow it in the
        // torrent: the next track of an album, which a player reading in order opens
        // next (its first chunks would otherwise be asked for only when it is read).
        let limit = if end.saturating_add(window) > file.len_bytes {
            self.content
                .stream_len(file.torrent)
                .map_or(file.len_bytes, |l| l.saturating_sub(file.stream_offset))
                .max(file.len_bytes)
        } else {
            file.len_bytes
        };
        let ahead = handle
            .readahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_read(offset, end, limit, window);
        if let Some(r) = ahead {
            self.content.prefetch(
                file.torrent,
                file.stream_offset + r.start..file.stream_offset + r.end,
            );
        }
        let started = Instant::now();
        let read = self.content.read(file.torrent, range.clone());
        let result = match self.config.read_timeout {
            Some(limit) => tokio::time::timeout(limit, read)
                .await
                .unwrap_or(Err(ContentError::Timeout)),
            None => read.await,
        };
        let bytes = result.map_err(|e| {
            let waited_ms = started.elapsed().as_millis() as u64;
            tracing::warn!(torrent = %file.torrent, file = file.index.0, ?range, waited_ms, error = %e, "read failed");
            self.failures().remember(file.torrent, range.clone(), &e);
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

    /// Names of the extended attributes of `ino`: the `user.bae.*` ones on everything
    /// inside a torrent (they describe the torrent), none on the root.
    pub fn xattr_names(&self, ino: InodeNo) -> Result<&'static [&'static str], FsError> {
        let tree = self.tree();
        let node = tree.get(ino).ok_or(FsError::NotFound)?;
        Ok(if node.torrent.is_some() { &XATTRS } else { &[] })
    }

    /// The value of extended attribute `name` of `ino` (see [`XATTRS`]): progress as
    /// the verified fraction (`0.0000`…`1.0000`), cached bytes, info hash (hex).
    /// Answered from memory.
    pub fn getxattr(&self, ino: InodeNo, name: &OsStr) -> Result<Vec<u8>, FsError> {
        let (torrent, info_hash) = {
            let tree = self.tree();
            let node = tree.get(ino).ok_or(FsError::NotFound)?;
            let t = node.torrent.ok_or(FsError::NoData)?;
            let hash = tree.info_hash(t).unwrap_or_default().to_owned();
            (t, hash)
        };
        let value = match name.to_str() {
            Some(XATTR_INFOHASH) => info_hash,
            Some(XATTR_PROGRESS) => {
                let p = self.content.progress(torrent).ok_or(FsError::NoData)?;
                let fraction = if p.total_bytes == 0 {
                    1.0
                } else {
                    p.verified_bytes as f64 / p.total_bytes as f64
                };
                format!("{:.4}", fraction.min(1.0))
            }
            Some(XATTR_CACHED) => {
                let p = self.content.progress(torrent).ok_or(FsError::NoData)?;
                p.cached_bytes.to_string()
            }
            _ => return Err(FsError::NoData),
        };
        Ok(value.into_bytes())
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

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>, FsError> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle(fh))
    }

    fn attr_of(&self, node: Node<'_>) -> Attr {
        let (kind, size_bytes, perm, nlink) = match &node.kind {
            NodeKind::Dir(d) => (EntryKind::Dir, 0, self.config.dir_perm, 2 + d.subdirs),
            NodeKind::File(f) => (EntryKind::File, f.len_bytes, self.config.file_perm, 1),
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
