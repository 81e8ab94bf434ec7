//! Rebuilding the cache's in-memory view after a start or a crash.
//!
//! The catalog says what is verified, complete and uploaded; the cache directory says
//! which chunk files exist. Reconciling them:
//! - files of unknown torrents, out-of-range indices and leftover temp files are
//!   deleted (no orphans);
//! - chunk files are present but unchecked: the read path hashes a complete chunk on
//!   its first use, so a torn or damaged file is fetched again or revoked then;
//! - a verified piece whose bytes are gone from the cache and not in the remote is
//!   forgotten (its chunk reverts to partial) so libtorrent downloads it again, rather
//!   than anything claiming bytes that do not exist (no phantoms).
//! - verified pieces in chunks not complete yet have no chunk hash: the daemon checks
//!   them against the torrent's piece hashes before libtorrent hears of them
//!   (`daemon::verify::recheck_unfinished_chunks`, `Store::revoke_partial_pieces`).
//!
//! A *dormant* torrent — no local chunk file, and either settled (every piece verified,
//! every chunk uploaded) or untouched (nothing verified or complete) —
//! has nothing to reconcile and an entry that follows from its catalog row alone: it is
//! kept as a small [`Dormant`] record and becomes a full entry on its first use (a read,
//! libtorrent opening it), with no catalog read. Memory then grows with the torrents in
//! use, not with the library.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::catalog::{Catalog, ChunkRecord, TorrentRecord};
use crate::model::{BitSet, ChunkIndex, ChunkKey, ChunkState, ChunkStates, PieceIndex, TorrentId};

use super::cache::{CacheState, Dormant, LocalChunk, TorrentEntry};
use super::files;
use super::StoreError;

pub(super) fn recover(root: &Path, catalog: &Catalog) -> Result<CacheState, StoreError> {
    let mut state = CacheState::default();
    // One listing of the cache root, so a torrent without local chunks costs no
    // directory lookup (a library has many more torrents than the cache holds).
    let mut dirs: HashSet<String> = HashSet::new();
    let entries = std::fs::read_dir(root).map_err(|e| StoreError::io(root, e))?;
    for entry in entries.flatten() {
        dirs.insert(entry.file_name().to_string_lossy().into_owned());
    }
    let mut known: HashSet<String> = HashSet::new();
    let mut dormant = Vec::new();
    for t in catalog.torrents()? {
        let name = hex::encode(t.uid);
        let has_dir = dirs.contains(&name);
        known.insert(name);
        // An empty directory (every chunk evicted) is removed: one syscall, and the
        // torrent needs no listing at the next start either.
        if let Some(d) = dormant_of(&t) {
            if !has_dir || std::fs::remove_dir(files::torrent_dir(root, &t.uid)).is_ok() {
                dormant.push(d);
                continue;
            }
        }
        if let Some(entry) = load_record(root, catalog, &t, has_dir)? {
            state.insert_torrent(t.id, entry);
        }
    }
    state.set_dormant(dormant);
    // Directories of torrents the catalog no longer knows: leftovers of a removal that
    // was interrupted, or of a crash between creating files and recording the torrent.
    for name in dirs.difference(&known) {
        tracing::info!(dir = %name, "removing orphan cache directory");
        let p = root.join(name);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if let Err(e) = r {
            tracing::warn!(path = %p.display(), error = %e, "could not remove orphan");
        }
    }
    Ok(state)
}

/// A torrent without local chunks that can stay dormant until it is used (see the
/// module comment).
fn dormant_of(t: &TorrentRecord) -> Option<Dormant> {
    let geometry = t.geometry?;
    let settled = t.settled();
    (settled || t.untouched()).then_some(Dormant {
        id: t.id,
        uid: t.uid,
        geometry,
        settled,
        pinned: t.seeding && t.pin,
    })
}

/// Loads one torrent's view from the catalog and its cache directory, repairing the
/// catalog where bytes were lost. `None` when the torrent has no layout yet.
pub(super) fn load_torrent(
    root: &Path,
    catalog: &Catalog,
    id: TorrentId,
) -> Result<Option<TorrentEntry>, StoreError> {
    let t = catalog.torrent(id)?;
    load_record(root, catalog, &t, true)
}

/// The chunk files in a torrent's cache directory (stray names are deleted).
fn chunk_files(dir: &Path, num_chunks: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        match name.parse::<u32>().ok().filter(|&i| i < num_chunks) {
            Some(i) => out.push(i),
            None => {
                tracing::info!(path = %path.display(), "removing stray cache file");
                let _ = files::remove(&path);
            }
        }
    }
    out
}

fn load_record(
    root: &Path,
    catalog: &Catalog,
    t: &TorrentRecord,
    has_dir: bool,
) -> Result<Option<TorrentEntry>, StoreError> {
    let Some(geometry) = t.geometry else {
        return Ok(None);
    };
    let (id, n_chunks, n_pieces) = (t.id, geometry.num_chunks(), geometry.num_pieces());
    let present = if has_dir {
        chunk_files(&files::torrent_dir(root, &t.uid), n_chunks)
    } else {
        Vec::new()
    };
    // Present files are not trusted: a complete chunk is hashed against its recorded
    // hash on first use (a torn fetch or a damaged file fails there). Their length says
    // nothing: trailing pad bytes are never written.
    let local = |rec: Option<&ChunkRecord>, present: bool| LocalChunk {
        present,
        hash: rec.and_then(|r| r.hash),
        object_id: rec.and_then(|r| r.object_id.clone()),
        checked: None,
    };

    if t.settled() {
        // Every chunk uploaded, every piece verified: nothing per chunk to read or
        // repair, only the identities of the chunks that are local.
        let mut entry = Dormant {
            id,
            uid: t.uid,
            geometry,
            settled: true,
            pinned: t.seeding && t.pin,
        }
        .entry();
        for c in present {
            let rec = catalog.chunk(ChunkKey::new(id, c))?;
            entry.set_local(c, local(rec.as_ref(), true));
        }
        return Ok(Some(entry));
    }

    let records = if t.untouched() {
        Vec::new()
    } else {
        catalog.chunks(id)?
    };
    let mut states = ChunkStates::uniform(n_chunks, ChunkState::Partial);
    let mut by_index: HashMap<u32, ChunkRecord> = HashMap::new();
    for r in records {
        if r.index < n_chunks {
            states.set(r.index, r.state);
            by_index.insert(r.index, r);
        }
    }
    let mut verified = BitSet::empty(n_pieces);
    if t.n_verified > 0 {
        for p in catalog.verified_pieces(id)? {
            verified.insert(p);
        }
    }
    let mut entry = TorrentEntry::new(t.uid, geometry, states, verified);
    let present: HashSet<u32> = present.into_iter().collect();
    for &c in &present {
        entry.set_local(c, local(by_index.get(&c), true));
    }
    for (c, r) in &by_index {
        if r.state == ChunkState::Complete && !present.contains(c) {
            entry.set_local(*c, local(Some(r), false));
        }
    }

    // Verified pieces whose bytes are neither local nor in the remote are forgotten.
    // Only chunks with a verified piece or a row can be lost: found from those.
    let mut candidates: HashSet<u32> = by_index.keys().copied().collect();
    for p in entry.verified.iter() {
        candidates.extend(geometry.chunks_of_piece(PieceIndex(p)));
    }
    let mut lost_pieces = Vec::new();
    let mut lost_chunks = Vec::new();
    let mut candidates: Vec<u32> = candidates.into_iter().collect();
    candidates.sort_unstable();
    for &i in &candidates {
        if present.contains(&i) || entry.state(i) == ChunkState::Uploaded {
            continue;
        }
        let had: Vec<u32> = geometry
            .pieces_of_chunk(ChunkIndex(i))
            .filter(|&p| entry.verified.contains(p))
            .collect();
        if had.is_empty() && entry.state(i) == ChunkState::Partial {
            continue;
        }
        tracing::warn!(torrent = %id, chunk = i, "chunk bytes lost from the cache; will download again");
        lost_pieces.extend(had);
        lost_chunks.push(i);
    }
    if !lost_chunks.is_empty() {
        lost_pieces.sort_unstable();
        lost_pieces.dedup();
        catalog.unverify(id, &lost_pieces, &lost_chunks)?;
        for &p in &lost_pieces {
            entry.verified.remove(p);
        }
        for &c in &lost_chunks {
            entry.states.set(c, ChunkState::Partial);
            entry.set_local(c, LocalChunk::default());
        }
        // A complete neighbour that shared a lost piece is complete no more.
        let neighbours: Vec<u32> = lost_pieces
            .iter()
            .flat_map(|&p| geometry.chunks_of_piece(PieceIndex(p)))
            .collect();
        for c in neighbours {
            if entry.state(c) == ChunkState::Complete {
                catalog.unverify(id, &[], &[c])?;
                entry.states.set(c, ChunkState::Partial);
                let present = entry.present(c);
                entry.set_local(
                    c,
                    LocalChunk {
                        present,
                        ..Default::default()
                    },
                );
            }
        }
    }
    entry.durable = entry.verified.clone();
    entry.pinned = t.seeding && t.pin;
    Ok(Some(entry))
}
