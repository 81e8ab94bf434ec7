//! The directory tree the mount shows, changed one torrent at a time.
//!
//! Shape: root → one directory per torrent (sanitised name) → the torrent's non-pad
//! files at their sanitised paths. Each torrent is a subtree of its own, built once
//! into an immutable [`record`](super::record) kept in the [`image`](super::image),
//! outside the heap: what the tree holds in memory is a few dozen bytes per torrent,
//! whatever its files. Adding, replacing or removing a torrent touches only its record
//! and one root entry, never the rest of the library, and no lookup waits on anything
//! but memory (or the page cache).
//!
//! Invariants:
//! - Every name is safe (see [`names`](super::names)); a file can only be reached
//!   through its own torrent's directory.
//! - Within a directory names are unique. Directories are placed before files, so a
//!   file whose name collides with a directory (or an earlier file) is the one renamed
//!   (`name (2).ext`), in file-index order.
//! - Equal torrent names get ` (2)`, ` (3)`…: a torrent keeps the name it got for as
//!   long as it is in the tree (a newcomer takes the lowest free suffix, a removal
//!   renames no one). [`Tree::build`] adds in `TorrentId` order, so after a restart
//!   the older torrent has the plain name.
//! - Inode numbers are a pure function of identity, not of insertion order: the high
//!   bits are a hash of the torrent (id, info hash), the low [`LOCAL_BITS`] its node's
//!   local id (see [`record`](super::record): derived from the file index, or the
//!   directory's path), the torrent part re-hashed with a salt on the (rare) collision.
//!   So they are the same after a change, a removal and re-adding, or a restart, and a
//!   number never names other bytes (an id the catalog gives again to another torrent
//!   comes with another info hash): the kernel may keep file pages.
//! - Root listing offsets are stable across changes: root entries are listed by torrent
//!   id (the order they were added: the catalog's ids grow), the id being the cookie,
//!   so a listing that spans a change neither repeats nor skips a torrent that did not
//!   change. Inside a torrent (immutable) entries are listed by name.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::path::Path;

use crate::model::{FileIndex, TorrentId};

use super::content::TorrentEntry;
use super::error::FsError;
use super::image::{Blob, Image};
use super::names::{sanitize_component, with_suffix};
use super::record::{encode, identity_hasher, RawKind, RawNode, Record, LOCAL_BITS, NO_POS};

/// A FUSE inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeNo(pub u64);

impl InodeNo {
    /// The mount's root directory (FUSE fixes it at 1).
    pub const ROOT: InodeNo = InodeNo(1);
}

/// Where a file's bytes live: a slice of one torrent's content stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileRef {
    pub torrent: TorrentId,
    pub index: FileIndex,
    pub stream_offset: u64,
    pub len_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dir {
    /// How many children it has.
    pub entries: u32,
    /// How many of them are directories (for `nlink`).
    pub subdirs: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Dir(Dir),
    File(FileRef),
}

/// One inode, as read from the tree (borrowing its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node<'a> {
    pub ino: InodeNo,
    /// The root is its own parent.
    pub parent: InodeNo,
    pub name: &'a str,
    /// Unix seconds.
    pub mtime: i64,
    pub kind: NodeKind,
    /// The torrent it belongs to; `None` for the root.
    pub torrent: Option<TorrentId>,
}

impl Node<'_> {
    pub fn as_dir(&self) -> Option<Dir> {
        match self.kind {
            NodeKind::Dir(d) => Some(d),
            NodeKind::File(_) => None,
        }
    }

    pub fn as_file(&self) -> Option<FileRef> {
        match self.kind {
            NodeKind::File(f) => Some(f),
            NodeKind::Dir(_) => None,
        }
    }
}

/// What one change did to the tree, for telling the kernel (see
/// [`Filesystem`](super::Filesystem)): the root entries that went or came, and the
/// inodes whose cached attributes are no longer right.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Names that left the root.
    pub removed: Vec<String>,
    /// Names that appeared in the root.
    pub added: Vec<String>,
    /// Inodes (besides the root) that changed or went away.
    pub stale: Vec<InodeNo>,
}

/// What the tree keeps in memory of one torrent (24 bytes); the rest is its record.
#[derive(Debug)]
struct Subtree {
    /// The high bits of its inode numbers.
    key: u64,
    record: Blob,
}

/// All torrents as directories and files.
#[derive(Debug)]
pub struct Tree {
    image: Image,
    /// By id, which is also the root listing order (see the module comment).
    torrents: BTreeMap<TorrentId, Subtree>,
    by_key: HashMap<u64, TorrentId>,
    /// Root entries by a hash of their name (the names are in the records). Two shown
    /// names never share a hash: a name whose hash is taken counts as taken.
    root_names: HashMap<u64, TorrentId>,
    hasher: RandomState,
    file_bytes: u64,
    inodes: u64,
    root_mtime: i64,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

/// Listing offsets 0 and 1 are `.` and `..`; root cookies start after them.
const FIRST_ROOT_COOKIE: u64 = 2;

/// Torrent keys have this many bits: an inode number stays below 2^63 (some tools
/// treat them as signed).
const KEY_BITS: u32 = 63 - LOCAL_BITS;

impl Tree {
    /// An empty tree (the root alone) whose records live on the heap.
    pub fn new() -> Tree {
        Tree::with_image(Image::heap())
    }

    /// An empty tree whose records live in an unlinked file in `dir` (see
    /// [`image`](super::image)).
    pub fn in_dir(dir: &Path) -> Tree {
        Tree::with_image(Image::in_dir(dir))
    }

    fn with_image(image: Image) -> Tree {
        Tree {
            image,
            torrents: BTreeMap::new(),
            by_key: HashMap::new(),
            root_names: HashMap::new(),
            hasher: RandomState::new(),
            file_bytes: 0,
            inodes: 1,
            root_mtime: 0,
        }
    }

    /// The tree of `torrents` (in any order; added in `TorrentId` order).
    pub fn build(torrents: &[TorrentEntry]) -> Tree {
        let mut sorted: Vec<&TorrentEntry> = torrents.iter().collect();
        sorted.sort_by_key(|t| t.id);
        let mut tree = Tree::new();
        for t in sorted {
            tree.upsert(t);
        }
        tree
    }

    fn record<'a>(&'a self, sub: &'a Subtree) -> Option<Record<'a>> {
        Record::parse(self.image.get(&sub.record))
    }

    /// Adds torrent `t`, or replaces it if its entry changed (a magnet's metadata
    /// arrived, a rename). `None` when the tree already shows exactly this entry.
    pub fn upsert(&mut self, t: &TorrentEntry) -> Option<Change> {
        if t.id.0 < 0 {
            // Catalog ids are SQLite rowids, positive: the listing order relies on it.
            tracing::warn!(torrent = %t.id, "a negative torrent id cannot be shown");
            return None;
        }
        let fp = fingerprint(t);
        let mut change = Change::default();
        let mut keep_name = None;
        if let Some(old) = self.torrents.get(&t.id) {
            let (same_entry, same_base, old_name) = match self.record(old) {
                Some(r) => (
                    r.fingerprint() == fp,
                    r.asked_name() == t.name,
                    r.node(0).map(|n| r.name(&n).to_string()),
                ),
                None => (false, false, None),
            };
            if same_entry {
                return None;
            }
            change = self.remove(t.id).unwrap_or_default();
            if same_base {
                // Same name asked for: the torrent keeps the one it shows.
                if let Some(name) = old_name {
                    change.removed.retain(|n| *n != name);
                    keep_name = Some(name);
                }
            }
        }
        let name = self.insert(t, &fp, keep_name);
        if !change.removed.contains(&name) {
            change.added.push(name);
        }
        self.root_mtime = self.root_mtime.max(t.added_at);
        self.compact_if_worth_it();
        Some(change)
    }

    /// Removes torrent `id` and all its nodes. `None` when it is not in the tree.
    pub fn remove(&mut self, id: TorrentId) -> Option<Change> {
        let sub = self.torrents.remove(&id)?;
        let (mut name, mut stale, mut added_at, mut file_bytes) = (None, Vec::new(), 0, 0u64);
        if let Some(r) = self.record(&sub) {
            if let Some(n) = r.node(0) {
                name = Some(r.name(&n).to_string());
                added_at = n.mtime;
            }
            for n in (0..r.node_count()).filter_map(|p| r.node(p)) {
                if let RawKind::File { len, .. } = n.kind {
                    file_bytes = file_bytes.saturating_add(len);
                }
                stale.push(ino(sub.key, n.local));
            }
        }
        if let Some(shown) = &name {
            let h = self.hasher.hash_one(shown.as_str());
            if self.root_names.get(&h) == Some(&id) {
                self.root_names.remove(&h);
            }
        }
        self.by_key.remove(&sub.key);
        self.inodes = self.inodes.saturating_sub(stale.len() as u64);
        self.file_bytes = self.file_bytes.saturating_sub(file_bytes);
        self.image.release(sub.record);
        if self.root_mtime == added_at {
            self.touch_root();
        }
        self.compact_if_worth_it();
        Some(Change {
            removed: name.into_iter().collect(),
            added: Vec::new(),
            stale,
        })
    }

    /// Whether torrent `id` is shown.
    pub fn contains(&self, id: TorrentId) -> bool {
        self.torrents.contains_key(&id)
    }

    /// Number of torrents shown.
    pub fn torrent_count(&self) -> usize {
        self.torrents.len()
    }

    /// The info hash of torrent `id` (hex), if it is shown.
    pub fn info_hash(&self, id: TorrentId) -> Option<&str> {
        self.record(self.torrents.get(&id)?).map(|r| r.info_hash())
    }

    /// The torrent an inode belongs to (`None` for the root and unknown inodes).
    pub fn torrent_of(&self, ino: InodeNo) -> Option<TorrentId> {
        self.get(ino)?.torrent
    }

    fn root(&self) -> Node<'_> {
        let n = self.torrents.len() as u32;
        Node {
            ino: InodeNo::ROOT,
            parent: InodeNo::ROOT,
            name: "",
            mtime: self.root_mtime,
            kind: NodeKind::Dir(Dir {
                entries: n,
                subdirs: n,
            }),
            torrent: None,
        }
    }

    /// Node `n` of torrent `id`'s record `r`.
    fn view<'a>(&self, id: TorrentId, key: u64, r: &Record<'a>, n: &RawNode) -> Node<'a> {
        let parent = match n.parent {
            NO_POS => InodeNo::ROOT,
            p => r.node(p).map_or(InodeNo::ROOT, |pn| ino(key, pn.local)),
        };
        let kind = match n.kind {
            RawKind::Dir {
                entries, subdirs, ..
            } => NodeKind::Dir(Dir { entries, subdirs }),
            RawKind::File {
                index,
                stream_offset,
                len,
            } => NodeKind::File(FileRef {
                torrent: id,
                index: FileIndex(index),
                stream_offset,
                len_bytes: len,
            }),
        };
        Node {
            ino: ino(key, n.local),
            parent,
            name: r.name(n),
            mtime: n.mtime,
            kind,
            torrent: Some(id),
        }
    }

    /// The torrent, its record and the node an inode is.
    fn locate(&self, ino: InodeNo) -> Option<(TorrentId, &Subtree, Record<'_>, RawNode)> {
        let id = *self.by_key.get(&(ino.0 >> LOCAL_BITS))?;
        let sub = self.torrents.get(&id)?;
        let r = self.record(sub)?;
        let local = (ino.0 & ((1 << LOCAL_BITS) - 1)) as u32;
        let n = r.node(r.pos_of(local)?)?;
        Some((id, sub, r, n))
    }

    pub fn get(&self, ino: InodeNo) -> Option<Node<'_>> {
        if ino == InodeNo::ROOT {
            return Some(self.root());
        }
        let (id, sub, r, n) = self.locate(ino)?;
        Some(self.view(id, sub.key, &r, &n))
    }

    /// The torrent shown in the root as `name`.
    fn root_entry(&self, name: &str) -> Option<(TorrentId, &Subtree, Record<'_>, RawNode)> {
        let id = *self.root_names.get(&self.hasher.hash_one(name))?;
        let sub = self.torrents.get(&id)?;
        let r = self.record(sub)?;
        let n = r.node(0)?;
        (r.name(&n) == name).then_some((id, sub, r, n))
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: InodeNo, name: &str) -> Result<Node<'_>, FsError> {
        if parent == InodeNo::ROOT {
            let (id, sub, r, n) = self.root_entry(name).ok_or(FsError::NotFound)?;
            return Ok(self.view(id, sub.key, &r, &n));
        }
        let (id, sub, r, dir) = self.locate(parent).ok_or(FsError::NotFound)?;
        if !matches!(dir.kind, RawKind::Dir { .. }) {
            return Err(FsError::NotDir);
        }
        let n = r.child(&dir, name).ok_or(FsError::NotFound)?;
        Ok(self.view(id, sub.key, &r, &n))
    }

    /// Up to `max` entries of directory `ino` from listing offset `offset` on: `.`,
    /// `..`, then the children (see the module comment for the order). Each comes with
    /// the offset to resume after it.
    pub fn list(
        &self,
        ino: InodeNo,
        offset: u64,
        max: usize,
    ) -> Result<Vec<(u64, &str, Node<'_>)>, FsError> {
        let node = self.get(ino).ok_or(FsError::NotFound)?;
        if node.as_dir().is_none() {
            return Err(FsError::NotDir);
        }
        let parent = self.get(node.parent).ok_or(FsError::NotFound)?;
        let mut out: Vec<(u64, &str, Node<'_>)> = [(1, ".", node), (2, "..", parent)]
            .into_iter()
            .skip(usize::try_from(offset.min(2)).unwrap_or(2))
            .collect();
        let from = offset.max(FIRST_ROOT_COOKIE);
        if ino == InodeNo::ROOT {
            // The cookie of a root entry is its torrent id (never negative) past the
            // first cookie.
            let first = i64::try_from(from - FIRST_ROOT_COOKIE).unwrap_or(i64::MAX);
            out.extend(
                self.torrents
                    .range(TorrentId(first)..)
                    .filter_map(|(id, sub)| {
                        let r = self.record(sub)?;
                        let n = self.view(*id, sub.key, &r, &r.node(0)?);
                        let cookie = u64::try_from(id.0).ok()? + FIRST_ROOT_COOKIE;
                        Some((cookie + 1, n.name, n))
                    })
                    .take(max),
            );
        } else {
            let (id, sub, r, dir) = self.locate(ino).ok_or(FsError::NotFound)?;
            let skip = u32::try_from(from - FIRST_ROOT_COOKIE).map_err(|_| FsError::NotFound)?;
            let children = dir.children();
            let start = children.start.saturating_add(skip).min(children.end);
            out.extend(
                (start..children.end)
                    .filter_map(|p| {
                        let n = self.view(id, sub.key, &r, &r.node(p)?);
                        Some((
                            FIRST_ROOT_COOKIE + u64::from(p - children.start) + 1,
                            n.name,
                            n,
                        ))
                    })
                    .take(max),
            );
        }
        out.truncate(max);
        Ok(out)
    }

    /// Number of inodes, the root included.
    pub fn inode_count(&self) -> u64 {
        self.inodes
    }

    /// Sum of the sizes of all shown files.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// Path components from the root to `ino` (for logs and tests).
    pub fn path_of(&self, ino: InodeNo) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut cur = self.get(ino)?;
        while cur.ino != InodeNo::ROOT {
            out.push(cur.name.to_string());
            cur = self.get(cur.parent)?;
        }
        out.reverse();
        Some(out)
    }

    /// Every inode, for tests and diagnostics.
    pub fn nodes(&self) -> impl Iterator<Item = Node<'_>> {
        std::iter::once(self.root()).chain(self.torrents.iter().flat_map(move |(id, sub)| {
            let r = self.record(sub);
            (0..r.map_or(0, |r| r.node_count())).filter_map(move |p| {
                let r = r?;
                Some(self.view(*id, sub.key, &r, &r.node(p)?))
            })
        }))
    }

    /// Recomputes the root's mtime, the newest torrent's `added_at`: one pass over the
    /// torrents, only when the newest one went.
    fn touch_root(&mut self) {
        self.root_mtime = self
            .torrents
            .values()
            .filter_map(|s| self.record(s)?.node(0))
            .map(|n| n.mtime)
            .max()
            .unwrap_or(0);
    }

    /// A key for torrent `t` no other shown torrent has (see the module comment).
    fn key_for(&self, t: &TorrentEntry) -> u64 {
        let mut salt: u32 = 0;
        loop {
            let h = identity_hasher(t, b"#T", salt);
            let mut first = [0u8; 8];
            first.copy_from_slice(&h.finalize().as_bytes()[..8]);
            let key = u64::from_le_bytes(first) >> (64 - KEY_BITS);
            // Key 0 would put inode numbers under the root's.
            if key != 0 && !self.by_key.contains_key(&key) {
                return key;
            }
            salt += 1;
        }
    }

    /// Builds torrent `t`'s subtree under the root, as `name` if given (known free),
    /// else its sanitised name or the lowest free ` (n)` form of it. Returns the name.
    fn insert(&mut self, t: &TorrentEntry, fp: &[u8; 32], name: Option<String>) -> String {
        let name = name.unwrap_or_else(|| {
            let base = sanitize_component(&t.name).unwrap_or_else(|| format!("torrent {}", t.id.0));
            let mut name = base.clone();
            let mut n = 2;
            while self
                .root_names
                .contains_key(&self.hasher.hash_one(name.as_str()))
            {
                name = with_suffix(&base, n, false);
                n += 1;
            }
            name
        });
        let encoded = encode(t, &name, fp);
        if encoded.skipped > 0 {
            tracing::warn!(torrent = %t.id, files = encoded.skipped, "files past the four millionth of a torrent are not shown");
        }
        let nodes = Record::parse(&encoded.bytes).map_or(0, |r| r.node_count());
        let Some(record) = self.image.put(encoded.bytes) else {
            tracing::warn!(torrent = %t.id, "too many files to show");
            return name;
        };
        let key = self.key_for(t);
        self.root_names
            .insert(self.hasher.hash_one(name.as_str()), t.id);
        self.by_key.insert(key, t.id);
        self.file_bytes = self.file_bytes.saturating_add(encoded.file_bytes);
        self.inodes += u64::from(nodes);
        self.torrents.insert(t.id, Subtree { key, record });
        name
    }

    /// Lowers the image's compaction threshold, so tests can reach it.
    #[cfg(test)]
    pub fn set_compact_at(&mut self, bytes: u64) {
        self.image.set_compact_at(bytes);
    }

    /// Bytes of removed records still in the image.
    #[cfg(test)]
    pub fn garbage_bytes(&self) -> u64 {
        self.image.garbage_bytes()
    }

    /// Copies the live records into a fresh image once removed ones dominate it.
    fn compact_if_worth_it(&mut self) {
        if !self.image.needs_compaction() {
            return;
        }
        let mut fresh = self.image.fresh();
        for sub in self.torrents.values_mut() {
            let bytes = self.image.get(&sub.record).to_vec();
            // It fitted before, so it fits again.
            if let Some(b) = fresh.put(bytes) {
                sub.record = b;
            }
        }
        tracing::debug!(live = fresh.live_bytes(), "mount tree's file compacted");
        self.image = fresh;
    }
}

/// Inode number of local id `local` of the torrent with key `key`.
fn ino(key: u64, local: u32) -> InodeNo {
    InodeNo((key << LOCAL_BITS) | u64::from(local))
}

/// A hash of everything in `t` that the subtree is built from.
fn fingerprint(t: &TorrentEntry) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    // Strings length-prefixed, so that no two entries hash the same bytes.
    let text = |h: &mut blake3::Hasher, s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    h.update(&t.id.0.to_le_bytes());
    text(&mut h, &t.name);
    h.update(&t.added_at.to_le_bytes());
    text(&mut h, &t.info_hash);
    h.update(&(t.files.len() as u64).to_le_bytes());
    for f in &t.files {
        h.update(&(f.path.len() as u64).to_le_bytes());
        for c in &f.path {
            text(&mut h, c);
        }
        h.update(&f.stream_offset.to_le_bytes());
        h.update(&f.len.to_le_bytes());
        h.update(&[u8::from(f.pad)]);
        h.update(&f.mtime.to_le_bytes());
    }
    *h.finalize().as_bytes()
}
