//! One torrent's subtree as a flat, immutable byte record, kept in the
//! [`image`](super::image) and read in place.
//!
//! Layout, little-endian:
//! - header ([`HEADER`] bytes): node count, file-table length, directory-table length,
//!   names length, asked-name length, info-hash length, then the entry's fingerprint;
//! - nodes ([`NODE`] bytes each), breadth first from the torrent's directory at
//!   position 0, so the children of a directory are consecutive and sorted by name;
//! - the file table: the position of each file index ([`NO_POS`]: not shown);
//! - the directory table: (local id, position) of every directory but the torrent's,
//!   sorted by local id;
//! - the names of the nodes, then the torrent's asked-for name, then its info hash.
//!
//! A node's *local id* is its inode number within the torrent (see [`tree`](super::tree)):
//! 0 for the torrent's directory, `1 + file index` for a file, and for a directory
//! [`DIR_BASE`] plus a hash of its sanitised path. Each is a function of what the
//! torrent is, never of where the node landed in the record.
//!
//! Reading never panics: a record that does not parse, or a position out of range,
//! reads as absent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use super::content::TorrentEntry;
use super::names::{sanitize_path, with_suffix};

/// Bits of an inode number that are the local id.
pub const LOCAL_BITS: u32 = 23;
/// Local ids from here on are directories; below are files (and the torrent's dir, 0).
pub const DIR_BASE: u32 = 1 << (LOCAL_BITS - 1);
/// Files with a larger index are not shown (a torrent of four million files).
pub const MAX_FILE_INDEX: u32 = DIR_BASE - 2;
/// "No position": the torrent directory's parent (the root), or a file index not shown.
pub const NO_POS: u32 = u32::MAX;

const HEADER: usize = 56;
const NODE: usize = 48;
const KIND_DIR: u8 = 1;

/// One node as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawNode {
    pub pos: u32,
    /// [`NO_POS`] for the torrent's directory.
    pub parent: u32,
    pub local: u32,
    pub mtime: i64,
    pub kind: RawKind,
    name_off: u32,
    name_len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawKind {
    Dir {
        first_child: u32,
        entries: u32,
        subdirs: u32,
    },
    File {
        index: u32,
        stream_offset: u64,
        len: u64,
    },
}

impl RawNode {
    /// Positions of its children (empty for a file).
    pub fn children(&self) -> Range<u32> {
        match self.kind {
            RawKind::Dir {
                first_child,
                entries,
                ..
            } => first_child..first_child.saturating_add(entries),
            RawKind::File { .. } => 0..0,
        }
    }
}

/// A parsed record: section offsets checked once, fields read on demand.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    bytes: &'a [u8],
    nodes: u32,
    file_slots: u32,
    dir_slots: u32,
    files_at: usize,
    dirs_at: usize,
    names_at: usize,
    names_len: usize,
    asked_len: usize,
    hash_len: usize,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

impl<'a> Record<'a> {
    pub fn parse(bytes: &'a [u8]) -> Option<Record<'a>> {
        let field = |i: usize| u32_at(bytes, i * 4);
        let (nodes, file_slots, dir_slots) = (field(0)?, field(1)?, field(2)?);
        let (names_len, asked_len, hash_len) =
            (field(3)? as usize, field(4)? as usize, field(5)? as usize);
        let files_at = HEADER.checked_add((nodes as usize).checked_mul(NODE)?)?;
        let dirs_at = files_at.checked_add((file_slots as usize).checked_mul(4)?)?;
        let names_at = dirs_at.checked_add((dir_slots as usize).checked_mul(8)?)?;
        let end = names_at
            .checked_add(names_len)?
            .checked_add(asked_len)?
            .checked_add(hash_len)?;
        if end != bytes.len() || nodes == 0 {
            return None;
        }
        Some(Record {
            bytes,
            nodes,
            file_slots,
            dir_slots,
            files_at,
            dirs_at,
            names_at,
            names_len,
            asked_len,
            hash_len,
        })
    }

    pub fn node_count(&self) -> u32 {
        self.nodes
    }

    pub fn fingerprint(&self) -> &'a [u8] {
        self.bytes.get(24..HEADER).unwrap_or(&[])
    }

    fn text(&self, at: usize, len: usize) -> &'a str {
        self.bytes
            .get(at..at + len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// The name the torrent asked for (untrusted, unsanitised).
    pub fn asked_name(&self) -> &'a str {
        self.text(self.names_at + self.names_len, self.asked_len)
    }

    pub fn info_hash(&self) -> &'a str {
        self.text(
            self.names_at + self.names_len + self.asked_len,
            self.hash_len,
        )
    }

    pub fn node(&self, pos: u32) -> Option<RawNode> {
        if pos >= self.nodes {
            return None;
        }
        let at = HEADER + pos as usize * NODE;
        let b = self.bytes.get(at..at + NODE)?;
        let (a, bb) = (u64_at(b, 24)?, u64_at(b, 32)?);
        let kind = if b[44] == KIND_DIR {
            RawKind::Dir {
                first_child: a as u32,
                entries: (a >> 32) as u32,
                subdirs: bb as u32,
            }
        } else {
            RawKind::File {
                index: u32_at(b, 40)?,
                stream_offset: a,
                len: bb,
            }
        };
        Some(RawNode {
            pos,
            parent: u32_at(b, 0)?,
            name_off: u32_at(b, 4)?,
            name_len: u32_at(b, 8)?,
            local: u32_at(b, 12)?,
            mtime: u64_at(b, 16)? as i64,
            kind,
        })
    }

    pub fn name(&self, n: &RawNode) -> &'a str {
        let off = n.name_off as usize;
        if off.saturating_add(n.name_len as usize) > self.names_len {
            return "";
        }
        self.text(self.names_at + off, n.name_len as usize)
    }

    /// The position of the node with local id `local`.
    pub fn pos_of(&self, local: u32) -> Option<u32> {
        if local == 0 {
            return Some(0);
        }
        if local < DIR_BASE {
            if local > self.file_slots {
                return None;
            }
            return u32_at(self.bytes, self.files_at + (local as usize - 1) * 4)
                .filter(|&p| p != NO_POS);
        }
        // Binary search of the directory table.
        let (mut lo, mut hi) = (0u32, self.dir_slots);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self.dirs_at + mid as usize * 8;
            let id = u32_at(self.bytes, at)?;
            match id.cmp(&local) {
                std::cmp::Ordering::Equal => return u32_at(self.bytes, at + 4),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// The child of directory `dir` called `name` (children are sorted by name).
    pub fn child(&self, dir: &RawNode, name: &str) -> Option<RawNode> {
        let r = dir.children();
        let (mut lo, mut hi) = (r.start, r.end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let n = self.node(mid)?;
            match self.name(&n).cmp(name) {
                std::cmp::Ordering::Equal => return Some(n),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }
}

/// A node while the record is being built.
struct Draft {
    name: String,
    parent: usize,
    local: u32,
    mtime: i64,
    /// Children by name, for directories.
    children: Option<BTreeMap<String, usize>>,
    file: Option<(u32, u64, u64)>,
}

/// What [`encode`] made.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub file_bytes: u64,
    /// Files left out because their index is past [`MAX_FILE_INDEX`].
    pub skipped: usize,
}

/// The record of torrent `t` shown as `dir_name` (already safe and free), with the
/// entry's `fingerprint`. Naming rules: see the [`tree`](super::tree) module comment.
pub fn encode(t: &TorrentEntry, dir_name: &str, fingerprint: &[u8; 32]) -> Encoded {
    let mut skipped = 0;
    let files: Vec<(u32, Vec<String>, &super::content::FileEntry)> = t
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.pad)
        .filter_map(|(i, f)| {
            let index = u32::try_from(i).ok().filter(|&i| i <= MAX_FILE_INDEX);
            if index.is_none() {
                skipped += 1;
            }
            let mut comps = sanitize_path(&f.path);
            if comps.is_empty() {
                comps.push(format!("file {i}"));
            }
            Some((index?, comps, f))
        })
        .collect();

    let mut drafts = vec![Draft {
        name: dir_name.to_string(),
        parent: usize::MAX,
        local: 0,
        mtime: t.added_at,
        children: Some(BTreeMap::new()),
        file: None,
    }];
    let mut used_locals: HashSet<u32> = HashSet::new();
    let add = |drafts: &mut Vec<Draft>, parent: usize, d: Draft| -> usize {
        let id = drafts.len();
        if let Some(c) = drafts[parent].children.as_mut() {
            c.insert(d.name.clone(), id);
        }
        drafts.push(d);
        id
    };

    // Directories first: a name wanted by a directory always goes to the directory.
    let mut dirs: HashMap<&[String], usize> = HashMap::new();
    dirs.insert(&[], 0);
    for (_, comps, _) in &files {
        for depth in 1..comps.len() {
            let prefix = &comps[..depth];
            if dirs.contains_key(prefix) {
                continue;
            }
            let parent = dirs[&comps[..depth - 1]];
            let local = dir_local(t, prefix, &mut used_locals);
            let d = Draft {
                name: prefix[depth - 1].clone(),
                parent,
                local,
                mtime: t.added_at,
                children: Some(BTreeMap::new()),
                file: None,
            };
            dirs.insert(prefix, add(&mut drafts, parent, d));
        }
    }

    let mut file_bytes = 0u64;
    let mut max_index = None;
    for (index, comps, f) in &files {
        let parent = dirs[&comps[..comps.len() - 1]];
        let base = &comps[comps.len() - 1];
        let mut name = base.clone();
        let mut n = 2;
        while drafts[parent]
            .children
            .as_ref()
            .is_some_and(|c| c.contains_key(&name))
        {
            name = with_suffix(base, n, true);
            n += 1;
        }
        let d = Draft {
            name,
            parent,
            local: index + 1,
            mtime: if f.mtime != 0 { f.mtime } else { t.added_at },
            children: None,
            file: Some((*index, f.stream_offset, f.len)),
        };
        add(&mut drafts, parent, d);
        file_bytes = file_bytes.saturating_add(f.len);
        max_index = Some(*index);
    }

    // Breadth first: each directory's children end up consecutive, in name order.
    let mut order = vec![0usize];
    let mut i = 0;
    while i < order.len() {
        if let Some(c) = &drafts[order[i]].children {
            order.extend(c.values().copied());
        }
        i += 1;
    }
    let mut pos_of = vec![0u32; drafts.len()];
    for (p, &d) in order.iter().enumerate() {
        pos_of[d] = p as u32;
    }

    let file_slots = max_index.map_or(0, |m| m as usize + 1);
    let mut file_table = vec![NO_POS; file_slots];
    let mut dir_table: Vec<(u32, u32)> = Vec::new();
    let mut names = String::new();
    let mut nodes = Vec::with_capacity(order.len() * NODE);
    for &d in &order {
        let draft = &drafts[d];
        let pos = pos_of[d];
        let parent = if d == 0 { NO_POS } else { pos_of[draft.parent] };
        let (a, b, index, kind) = match (&draft.children, draft.file) {
            (Some(c), _) => {
                let first = c.values().next().map_or(0, |&x| pos_of[x]);
                let subdirs = c
                    .values()
                    .filter(|&&x| drafts[x].children.is_some())
                    .count() as u64;
                (
                    u64::from(first) | ((c.len() as u64) << 32),
                    subdirs,
                    0,
                    KIND_DIR,
                )
            }
            (None, Some((index, off, len))) => {
                file_table[index as usize] = pos;
                (off, len, index, 0)
            }
            (None, None) => (0, 0, 0, 0),
        };
        if kind == KIND_DIR && d != 0 {
            dir_table.push((draft.local, pos));
        }
        nodes.extend_from_slice(&parent.to_le_bytes());
        nodes.extend_from_slice(&(names.len() as u32).to_le_bytes());
        nodes.extend_from_slice(&(draft.name.len() as u32).to_le_bytes());
        nodes.extend_from_slice(&draft.local.to_le_bytes());
        nodes.extend_from_slice(&draft.mtime.to_le_bytes());
        nodes.extend_from_slice(&a.to_le_bytes());
        nodes.extend_from_slice(&b.to_le_bytes());
        nodes.extend_from_slice(&index.to_le_bytes());
        nodes.extend_from_slice(&[kind, 0, 0, 0]);
        names.push_str(&draft.name);
    }
    dir_table.sort_unstable();

    let mut out = Vec::with_capacity(
        HEADER + nodes.len() + file_slots * 4 + dir_table.len() * 8 + names.len() + 128,
    );
    for v in [
        order.len(),
        file_slots,
        dir_table.len(),
        names.len(),
        t.name.len(),
        t.info_hash.len(),
    ] {
        out.extend_from_slice(&(v as u32).to_le_bytes());
    }
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(&nodes);
    for p in file_table {
        out.extend_from_slice(&p.to_le_bytes());
    }
    for (local, pos) in dir_table {
        out.extend_from_slice(&local.to_le_bytes());
        out.extend_from_slice(&pos.to_le_bytes());
    }
    out.extend_from_slice(names.as_bytes());
    out.extend_from_slice(t.name.as_bytes());
    out.extend_from_slice(t.info_hash.as_bytes());
    Encoded {
        bytes: out,
        file_bytes,
        skipped,
    }
}

/// A hasher fed with what torrent `t` is (info hash, id), a `tag` saying what is being
/// named, and a `salt` for re-hashing on a collision: the root of every inode number.
pub fn identity_hasher(t: &TorrentEntry, tag: &[u8], salt: u32) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    h.update(&salt.to_le_bytes());
    // An info hash is hex: the '#' of the tag after it cannot be part of it.
    h.update(t.info_hash.as_bytes());
    h.update(tag);
    h.update(&t.id.0.to_le_bytes());
    h
}

/// The local id of directory `path` of `t`: [`DIR_BASE`] + a hash of what the torrent
/// is and the path, re-hashed with a salt while it collides with one already used.
fn dir_local(t: &TorrentEntry, path: &[String], used: &mut HashSet<u32>) -> u32 {
    let mut salt: u32 = 0;
    loop {
        let mut h = identity_hasher(t, b"#D", salt);
        for c in path {
            // Components never contain '/', so this encoding is unambiguous.
            h.update(b"/");
            h.update(c.as_bytes());
        }
        let d = h.finalize();
        let v = u32::from_le_bytes([d.as_bytes()[0], d.as_bytes()[1], d.as_bytes()[2], 0]);
        let local = DIR_BASE | (v & (DIR_BASE - 1));
        if used.insert(local) {
            return local;
        }
        salt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::content::FileEntry;
    use crate::model::TorrentId;

    fn entry(files: &[(&[&str], u64, bool)]) -> TorrentEntry {
        let mut off = 0;
        TorrentEntry {
            id: TorrentId(3),
            name: "Ask/ed".into(),
            added_at: 100,
            info_hash: "ab".repeat(20),
            files: files
                .iter()
                .map(|(p, len, pad)| {
                    let f = FileEntry {
                        path: p.iter().map(|s| s.to_string()).collect(),
                        stream_offset: off,
                        len: *len,
                        pad: *pad,
                        mtime: 0,
                    };
                    off += len;
                    f
                })
                .collect(),
        }
    }

    #[test]
    fn a_record_reads_back_what_was_encoded() {
        let t = entry(&[
            (&["b", "2.flac"], 20, false),
            (&[".pad", "1"], 5, true),
            (&["a.flac"], 10, false),
            (&["b", "1.flac"], 30, false),
            (&["a.flac"], 1, false),
        ]);
        let fp = [9u8; 32];
        let e = encode(&t, "Shown", &fp);
        assert_eq!((e.file_bytes, e.skipped), (61, 0));
        let r = Record::parse(&e.bytes).unwrap();
        assert_eq!(r.fingerprint(), &fp);
        assert_eq!((r.asked_name(), r.info_hash()), ("Ask/ed", &*t.info_hash));
        // Torrent dir, b/, three files in it and beside it: 6 nodes.
        assert_eq!(r.node_count(), 6);
        let root = r.node(0).unwrap();
        assert_eq!((r.name(&root), root.parent), ("Shown", NO_POS));
        let names: Vec<&str> = root
            .children()
            .map(|p| r.name(&r.node(p).unwrap()))
            .collect();
        assert_eq!(
            names,
            ["a (2).flac", "a.flac", "b"],
            "sorted, the later file renamed"
        );
        let b = r.child(&root, "b").unwrap();
        assert!(matches!(b.kind, RawKind::Dir { entries: 2, .. }));
        assert!(b.local >= DIR_BASE);
        assert_eq!(r.pos_of(b.local), Some(b.pos));
        let one = r.child(&b, "1.flac").unwrap();
        assert_eq!(one.parent, b.pos);
        assert_eq!(
            one.kind,
            RawKind::File {
                index: 3,
                stream_offset: 35,
                len: 30
            }
        );
        // File local ids are 1 + index; the pad file is not shown.
        assert_eq!(r.pos_of(4), Some(one.pos));
        assert_eq!(r.pos_of(2), None);
        assert_eq!(r.pos_of(99), None);
        assert!(r.child(&root, "zzz").is_none());
        assert!(r.node(6).is_none());
    }

    #[test]
    fn damaged_records_read_as_absent() {
        let t = entry(&[(&["a"], 1, false)]);
        let e = encode(&t, "T", &[0; 32]);
        for cut in [0, 10, e.bytes.len() - 1] {
            assert!(Record::parse(&e.bytes[..cut]).is_none(), "cut at {cut}");
        }
        assert!(Record::parse(&e.bytes).is_some());
    }

    #[test]
    fn directory_ids_do_not_depend_on_the_other_files() {
        let small = entry(&[(&["d", "x"], 1, false)]);
        let big = entry(&[(&["c", "y"], 1, false), (&["d", "x"], 1, false)]);
        let id_of = |t: &TorrentEntry| {
            let e = encode(t, "T", &[0; 32]);
            let r = Record::parse(&e.bytes).unwrap();
            let root = r.node(0).unwrap();
            let d = r.child(&root, "d").unwrap();
            d.local
        };
        assert_eq!(id_of(&small), id_of(&big));
    }
}
