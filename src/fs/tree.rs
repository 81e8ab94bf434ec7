//! The directory tree the mount shows, kept in memory and changed one torrent at a time.
//!
//! Shape: root → one directory per torrent (sanitised name) → the torrent's non-pad
//! files at their sanitised paths. Each torrent is a subtree of its own: adding,
//! replacing or removing a torrent touches only its nodes and one root entry, never
//! the rest of the library.
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
//! - Inode numbers are a pure function of identity, not of insertion order: a hash of
//!   (torrent id, info hash, file index) for files, (torrent id, info hash, sanitised
//!   path) for directories, re-hashed with a salt on the (astronomically rare)
//!   collision. So they are the same after a change, a removal and re-adding, or a
//!   restart, and a number never names other bytes (an id the catalog gives again to
//!   another torrent comes with another info hash): the kernel may keep file pages.
//! - Root listing offsets are stable across changes: root entries are listed in the
//!   order they were added, each with a cookie that is never reused, so a listing that
//!   spans a change neither repeats nor skips a torrent that did not change. Inside a
//!   torrent (immutable) entries are listed by name.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::model::{FileIndex, TorrentId};

use super::content::TorrentEntry;
use super::error::FsError;
use super::names::{sanitize_component, sanitize_path, with_suffix};

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

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dir {
    /// Children by name; sorted, so `readdir` offsets are stable within one tree. A
    /// name is shared with the child's node: one allocation per entry of the library.
    pub children: BTreeMap<Arc<str>, InodeNo>,
    /// How many children are directories (for `nlink`).
    pub subdirs: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Dir(Dir),
    File(FileRef),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub ino: InodeNo,
    /// The root is its own parent.
    pub parent: InodeNo,
    pub name: Arc<str>,
    /// Unix seconds.
    pub mtime: i64,
    pub kind: NodeKind,
    /// The torrent it belongs to; `None` for the root.
    pub torrent: Option<TorrentId>,
}

impl Node {
    pub fn as_dir(&self) -> Option<&Dir> {
        match &self.kind {
            NodeKind::Dir(d) => Some(d),
            NodeKind::File(_) => None,
        }
    }

    pub fn as_file(&self) -> Option<&FileRef> {
        match &self.kind {
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

/// The nodes one torrent owns.
#[derive(Debug)]
struct Subtree {
    /// A hash of the entry it was built from: an upsert of the same entry changes
    /// nothing. (Not the entry itself: its file list would double the tree's memory.)
    fingerprint: [u8; 32],
    /// The name the torrent asked for (untrusted), and when it was added.
    name: String,
    added_at: i64,
    info_hash: String,
    dir: InodeNo,
    /// Every inode of the torrent, its directory included.
    inodes: Vec<InodeNo>,
    file_bytes: u64,
    /// The root listing cookie of its directory.
    cookie: u64,
}

/// All torrents as directories and files.
#[derive(Debug)]
pub struct Tree {
    nodes: HashMap<InodeNo, Node>,
    torrents: HashMap<TorrentId, Subtree>,
    /// Root entries by listing cookie (see the module comment).
    root_order: BTreeMap<u64, InodeNo>,
    next_cookie: u64,
    file_bytes: u64,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

/// Listing offsets 0 and 1 are `.` and `..`; root cookies start after them.
const FIRST_ROOT_COOKIE: u64 = 2;

impl Tree {
    /// An empty tree: the root alone.
    pub fn new() -> Tree {
        let mut nodes = HashMap::new();
        nodes.insert(
            InodeNo::ROOT,
            Node {
                ino: InodeNo::ROOT,
                parent: InodeNo::ROOT,
                name: Arc::from(""),
                mtime: 0,
                kind: NodeKind::Dir(Dir::default()),
                torrent: None,
            },
        );
        Tree {
            nodes,
            torrents: HashMap::new(),
            root_order: BTreeMap::new(),
            next_cookie: FIRST_ROOT_COOKIE,
            file_bytes: 0,
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

    /// Adds torrent `t`, or replaces it if its entry changed (a magnet's metadata
    /// arrived, a rename). `None` when the tree already shows exactly this entry.
    pub fn upsert(&mut self, t: &TorrentEntry) -> Option<Change> {
        let mut change = Change::default();
        let mut keep_name = None;
        if let Some(old) = self.torrents.get(&t.id) {
            if old.fingerprint == fingerprint(t) {
                return None;
            }
            let same_base = old.name == t.name;
            let old_name = self.nodes.get(&old.dir).map(|n| n.name.to_string());
            change = self.remove(t.id).unwrap_or_default();
            if same_base {
                // Same name asked for: the torrent keeps the one it shows.
                if let Some(name) = old_name {
                    change.removed.retain(|n| *n != name);
                    keep_name = Some(name);
                }
            }
        }
        let name = self.insert(t, keep_name);
        if !change.removed.contains(&name) {
            change.added.push(name);
        }
        if let Some(root) = self.nodes.get_mut(&InodeNo::ROOT) {
            root.mtime = root.mtime.max(t.added_at);
        }
        Some(change)
    }

    /// Removes torrent `id` and all its nodes. `None` when it is not in the tree.
    pub fn remove(&mut self, id: TorrentId) -> Option<Change> {
        let sub = self.torrents.remove(&id)?;
        let name = self.nodes.get(&sub.dir).map(|n| n.name.to_string());
        if let Some(NodeKind::Dir(root)) = self.nodes.get_mut(&InodeNo::ROOT).map(|n| &mut n.kind) {
            if let Some(name) = &name {
                root.children.remove(name.as_str());
            }
            root.subdirs = root.subdirs.saturating_sub(1);
        }
        self.root_order.remove(&sub.cookie);
        for ino in &sub.inodes {
            self.nodes.remove(ino);
        }
        self.file_bytes = self.file_bytes.saturating_sub(sub.file_bytes);
        if self.get(InodeNo::ROOT).map(|r| r.mtime) == Some(sub.added_at) {
            self.touch_root();
        }
        Some(Change {
            removed: name.into_iter().collect(),
            added: Vec::new(),
            stale: sub.inodes,
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
        self.torrents.get(&id).map(|s| s.info_hash.as_str())
    }

    /// The torrent an inode belongs to (`None` for the root and unknown inodes).
    pub fn torrent_of(&self, ino: InodeNo) -> Option<TorrentId> {
        self.get(ino)?.torrent
    }

    pub fn get(&self, ino: InodeNo) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: InodeNo, name: &str) -> Result<&Node, FsError> {
        let dir = self
            .get(parent)
            .ok_or(FsError::NotFound)?
            .as_dir()
            .ok_or(FsError::NotDir)?;
        let ino = dir.children.get(name).ok_or(FsError::NotFound)?;
        self.get(*ino).ok_or(FsError::NotFound)
    }

    /// Up to `max` entries of directory `ino` from listing offset `offset` on: `.`,
    /// `..`, then the children (see the module comment for the order). Each comes with
    /// the offset to resume after it.
    pub fn list(
        &self,
        ino: InodeNo,
        offset: u64,
        max: usize,
    ) -> Result<Vec<(u64, &str, &Node)>, FsError> {
        let node = self.get(ino).ok_or(FsError::NotFound)?;
        let dir = node.as_dir().ok_or(FsError::NotDir)?;
        let parent = self.get(node.parent).ok_or(FsError::NotFound)?;
        let mut out: Vec<(u64, &str, &Node)> = [(1, ".", node), (2, "..", parent)]
            .into_iter()
            .skip(usize::try_from(offset.min(2)).unwrap_or(2))
            .collect();
        let from = offset.max(FIRST_ROOT_COOKIE);
        if ino == InodeNo::ROOT {
            out.extend(
                self.root_order
                    .range(from..)
                    .filter_map(|(cookie, ino)| {
                        let n = self.get(*ino)?;
                        Some((cookie + 1, &*n.name, n))
                    })
                    .take(max),
            );
        } else {
            let skip = usize::try_from(from - FIRST_ROOT_COOKIE).map_err(|_| FsError::NotFound)?;
            out.extend(
                dir.children
                    .iter()
                    .skip(skip)
                    .enumerate()
                    .filter_map(|(i, (name, ino))| {
                        Some((from + i as u64 + 1, &**name, self.get(*ino)?))
                    })
                    .take(max),
            );
        }
        out.truncate(max);
        Ok(out)
    }

    /// Number of inodes, the root included.
    pub fn inode_count(&self) -> u64 {
        self.nodes.len() as u64
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
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Recomputes the root's mtime, the newest torrent's `added_at`: one pass over the
    /// torrents, only when the newest one went.
    fn touch_root(&mut self) {
        let mtime = self
            .torrents
            .values()
            .map(|s| s.added_at)
            .max()
            .unwrap_or(0);
        if let Some(root) = self.nodes.get_mut(&InodeNo::ROOT) {
            root.mtime = mtime;
        }
    }

    /// Builds torrent `t`'s subtree under the root, as `name` if given (known free),
    /// else its sanitised name or the lowest free ` (n)` form of it. Returns the name.
    fn insert(&mut self, t: &TorrentEntry, name: Option<String>) -> String {
        let mut b = Builder {
            torrent: t.id,
            content: &t.info_hash,
            nodes: &mut self.nodes,
            inodes: Vec::new(),
            file_bytes: 0,
        };
        let tdir = b.alloc(Identity::TorrentDir(t.id));
        let name = match name {
            Some(n) => {
                b.attach(
                    InodeNo::ROOT,
                    tdir,
                    n.clone(),
                    t.added_at,
                    Dir::default().into(),
                );
                n
            }
            None => {
                let base =
                    sanitize_component(&t.name).unwrap_or_else(|| format!("torrent {}", t.id.0));
                b.attach_unique(
                    InodeNo::ROOT,
                    tdir,
                    &base,
                    false,
                    t.added_at,
                    Dir::default().into(),
                )
            }
        };
        b.add_files(t, tdir);
        let (inodes, file_bytes) = (b.inodes, b.file_bytes);
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.root_order.insert(cookie, tdir);
        self.file_bytes = self.file_bytes.saturating_add(file_bytes);
        self.torrents.insert(
            t.id,
            Subtree {
                fingerprint: fingerprint(t),
                name: t.name.clone(),
                added_at: t.added_at,
                info_hash: t.info_hash.clone(),
                dir: tdir,
                inodes,
                file_bytes,
                cookie,
            },
        );
        name
    }
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

/// Adds one torrent's nodes to the tree's node map.
struct Builder<'a> {
    torrent: TorrentId,
    /// What the torrent's bytes are (its info hash): part of every inode's identity.
    content: &'a str,
    nodes: &'a mut HashMap<InodeNo, Node>,
    /// The inodes added so far.
    inodes: Vec<InodeNo>,
    file_bytes: u64,
}

/// What an inode number is derived from.
enum Identity<'a> {
    TorrentDir(TorrentId),
    Dir(TorrentId, &'a [String]),
    File(TorrentId, FileIndex),
}

impl Builder<'_> {
    fn add_files(&mut self, t: &TorrentEntry, tdir: InodeNo) {
        let files: Vec<(FileIndex, Vec<String>, &super::content::FileEntry)> = t
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.pad)
            .map(|(i, f)| {
                let index = FileIndex(u32::try_from(i).unwrap_or(u32::MAX));
                let mut comps = sanitize_path(&f.path);
                if comps.is_empty() {
                    comps.push(format!("file {i}"));
                }
                (index, comps, f)
            })
            .collect();

        // Directories first: a name wanted by a directory always goes to the directory.
        let mut dirs: HashMap<Vec<String>, InodeNo> = HashMap::new();
        dirs.insert(Vec::new(), tdir);
        for (_, comps, _) in &files {
            for depth in 1..comps.len() {
                let prefix = &comps[..depth];
                if dirs.contains_key(prefix) {
                    continue;
                }
                let parent = dirs[&comps[..depth - 1]];
                let ino = self.alloc(Identity::Dir(t.id, prefix));
                self.attach(
                    parent,
                    ino,
                    prefix[depth - 1].clone(),
                    t.added_at,
                    Dir::default().into(),
                );
                dirs.insert(prefix.to_vec(), ino);
            }
        }

        for (index, comps, f) in files {
            let parent = dirs[&comps[..comps.len() - 1]];
            let ino = self.alloc(Identity::File(t.id, index));
            let file = FileRef {
                torrent: t.id,
                index,
                stream_offset: f.stream_offset,
                len_bytes: f.len,
            };
            let mtime = if f.mtime != 0 { f.mtime } else { t.added_at };
            let name = &comps[comps.len() - 1];
            self.attach_unique(parent, ino, name, true, mtime, NodeKind::File(file));
            self.file_bytes = self.file_bytes.saturating_add(f.len);
        }
    }

    /// Adds `ino` under `parent` as `base`, or `base (2)`, `base (3)`… if taken.
    /// Returns the name it got.
    fn attach_unique(
        &mut self,
        parent: InodeNo,
        ino: InodeNo,
        base: &str,
        keep_ext: bool,
        mtime: i64,
        kind: NodeKind,
    ) -> String {
        let mut name = base.to_string();
        let mut n = 2;
        while self.child(parent, &name).is_some() {
            name = with_suffix(base, n, keep_ext);
            n += 1;
        }
        self.attach(parent, ino, name.clone(), mtime, kind);
        name
    }

    fn child(&self, parent: InodeNo, name: &str) -> Option<InodeNo> {
        self.nodes
            .get(&parent)?
            .as_dir()?
            .children
            .get(name)
            .copied()
    }

    fn attach(&mut self, parent: InodeNo, ino: InodeNo, name: String, mtime: i64, kind: NodeKind) {
        let name: Arc<str> = name.into();
        let is_dir = matches!(kind, NodeKind::Dir(_));
        if let Some(NodeKind::Dir(d)) = self.nodes.get_mut(&parent).map(|p| &mut p.kind) {
            d.children.insert(name.clone(), ino);
            if is_dir {
                d.subdirs += 1;
            }
        }
        self.nodes.insert(
            ino,
            Node {
                ino,
                parent,
                name,
                mtime,
                kind,
                torrent: Some(self.torrent),
            },
        );
    }

    /// A fresh inode number derived from `id` (see the module comment).
    fn alloc(&mut self, id: Identity<'_>) -> InodeNo {
        let mut key = Vec::with_capacity(128);
        // An info hash is hex: the '#' after it cannot be part of it.
        key.extend_from_slice(self.content.as_bytes());
        key.push(b'#');
        match id {
            Identity::TorrentDir(t) => {
                key.push(b'T');
                key.extend_from_slice(&t.0.to_le_bytes());
            }
            Identity::Dir(t, path) => {
                key.push(b'D');
                key.extend_from_slice(&t.0.to_le_bytes());
                for c in path {
                    // Components never contain '/', so this encoding is unambiguous.
                    key.push(b'/');
                    key.extend_from_slice(c.as_bytes());
                }
            }
            Identity::File(t, i) => {
                key.push(b'F');
                key.extend_from_slice(&t.0.to_le_bytes());
                key.extend_from_slice(&i.0.to_le_bytes());
            }
        }
        let mut salt: u32 = 0;
        loop {
            let mut h = blake3::Hasher::new();
            h.update(&salt.to_le_bytes());
            h.update(&key);
            let digest = h.finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest.as_bytes()[..8]);
            // 63 bits: some tools treat inode numbers as signed.
            let ino = u64::from_le_bytes(first) >> 1;
            // Taken inodes are the node map's keys; a placeholder reserves this one
            // until `attach` fills it in.
            if ino > InodeNo::ROOT.0 && !self.nodes.contains_key(&InodeNo(ino)) {
                self.inodes.push(InodeNo(ino));
                self.nodes.insert(
                    InodeNo(ino),
                    Node {
                        ino: InodeNo(ino),
                        parent: InodeNo::ROOT,
                        name: Arc::from(""),
                        mtime: 0,
                        kind: NodeKind::Dir(Dir::default()),
                        torrent: Some(self.torrent),
                    },
                );
                return InodeNo(ino);
            }
            salt += 1;
        }
    }
}

impl From<Dir> for NodeKind {
    fn from(d: Dir) -> Self {
        NodeKind::Dir(d)
    }
}
