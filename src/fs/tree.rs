//! The directory tree the mount shows, built from a [`Content`](super::Content) snapshot.
//!
//! Shape: root → one directory per torrent (sanitised name; equal names get ` (2)`,
//! ` (3)`… in `TorrentId` order) → the torrent's non-pad files at their sanitised paths.
//!
//! Invariants:
//! - Every name is safe (see [`names`](super::names)); a file can only be reached
//!   through its own torrent's directory.
//! - Within a directory names are unique. Directories are placed before files, so a
//!   file whose name collides with a directory (or an earlier file) is the one renamed
//!   (`name (2).ext`), in file-index order.
//! - Inode numbers are a pure function of identity, not of insertion order: a hash of
//!   (torrent id, file index) for files, (torrent id, sanitised path) for directories,
//!   re-hashed with a salt on the (astronomically rare) collision. So they are the same
//!   after a rebuild or a restart.
//! - A tree is immutable once built; a new snapshot generation means a new tree.

use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// Children by name; sorted, so `readdir` offsets are stable within one tree.
    pub children: BTreeMap<String, InodeNo>,
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
    pub name: String,
    /// Unix seconds.
    pub mtime: i64,
    pub kind: NodeKind,
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

/// An immutable view of all torrents as directories and files.
#[derive(Debug)]
pub struct Tree {
    generation: u64,
    nodes: HashMap<InodeNo, Node>,
    file_bytes: u64,
}

impl Tree {
    /// The tree for snapshot `generation` of `torrents` (in any order).
    pub fn build(generation: u64, torrents: &[TorrentEntry]) -> Tree {
        let mut sorted: Vec<&TorrentEntry> = torrents.iter().collect();
        sorted.sort_by_key(|t| t.id);
        let mut b = Builder::default();
        let root_mtime = sorted.iter().map(|t| t.added_at).max().unwrap_or(0);
        b.nodes.insert(
            InodeNo::ROOT,
            Node {
                ino: InodeNo::ROOT,
                parent: InodeNo::ROOT,
                name: String::new(),
                mtime: root_mtime,
                kind: NodeKind::Dir(Dir::default()),
            },
        );
        b.used.insert(InodeNo::ROOT.0);
        for t in sorted {
            b.add_torrent(t);
        }
        Tree {
            generation,
            nodes: b.nodes,
            file_bytes: b.file_bytes,
        }
    }

    /// The snapshot generation this tree was built from.
    pub fn generation(&self) -> u64 {
        self.generation
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
            out.push(cur.name.clone());
            cur = self.get(cur.parent)?;
        }
        out.reverse();
        Some(out)
    }

    /// Every inode, for tests and diagnostics.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }
}

#[derive(Default)]
struct Builder {
    nodes: HashMap<InodeNo, Node>,
    used: HashSet<u64>,
    file_bytes: u64,
}

/// What an inode number is derived from.
enum Identity<'a> {
    TorrentDir(TorrentId),
    Dir(TorrentId, &'a [String]),
    File(TorrentId, FileIndex),
}

impl Builder {
    fn add_torrent(&mut self, t: &TorrentEntry) {
        let base = sanitize_component(&t.name).unwrap_or_else(|| format!("torrent {}", t.id.0));
        let tdir = self.alloc(Identity::TorrentDir(t.id));
        self.attach_unique(
            InodeNo::ROOT,
            tdir,
            &base,
            false,
            t.added_at,
            Dir::default().into(),
        );

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
    fn attach_unique(
        &mut self,
        parent: InodeNo,
        ino: InodeNo,
        base: &str,
        keep_ext: bool,
        mtime: i64,
        kind: NodeKind,
    ) {
        let mut name = base.to_string();
        let mut n = 2;
        while self.child(parent, &name).is_some() {
            name = with_suffix(base, n, keep_ext);
            n += 1;
        }
        self.attach(parent, ino, name, mtime, kind);
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
            },
        );
    }

    /// A fresh inode number derived from `id` (see the module comment).
    fn alloc(&mut self, id: Identity<'_>) -> InodeNo {
        let mut key = Vec::with_capacity(64);
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
            if ino > InodeNo::ROOT.0 && self.used.insert(ino) {
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
