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

use std::collections::HashMap;
use std::path::Path;

use crate::catalog::Catalog;
use crate::model::{ChunkIndex, ChunkState, TorrentId};

use super::cache::{CacheState, ChunkEntry, TorrentEntry};
use super::files;
use super::StoreError;

pub(super) fn recover(root: &Path, catalog: &Catalog) -> Result<CacheState, StoreError> {
    let mut state = CacheState::default();
    let mut by_uid: HashMap<String, TorrentId> = HashMap::new();
    for t in catalog.torrents()? {
        by_uid.insert(hex::encode(t.uid), t.id);
        if let Some(entry) = load_torrent(root, catalog, t.id)? {
            state.insert_torrent(t.id, entry);
        }
    }
    // Directories of torrents the catalog no longer knows: leftovers of a removal that
    // was interrupted, or of a crash between creating files and recording the torrent.
    let entries = std::fs::read_dir(root).map_err(|e| StoreError::io(root, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !by_uid.contains_key(&name) {
            tracing::info!(dir = %name, "removing orphan cache directory");
            let p = entry.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(e) = r {
                tracing::warn!(path = %p.display(), error = %e, "could not remove orphan");
            }
        }
    }
    Ok(state)
}

/// Loads one torrent's view from the catalog and its cache directory, repairing the
/// catalog where bytes were lost. `None` when the torrent has no layout yet.
pub(super) fn load_torrent(
    root: &Path,
    catalog: &Catalog,
    id: TorrentId,
) -> Result<Option<TorrentEntry>, StoreError> {
    let t = catalog.torrent(id)?;
    let Some(geometry) = t.geometry else {
        return Ok(None);
    };
    let records = catalog.chunks(id)?;
    let mut chunks: Vec<ChunkEntry> = (0..geometry.num_chunks())
        .map(|c| ChunkEntry {
            len: geometry.chunk_len(ChunkIndex(c)),
            state: ChunkState::Partial,
            present: false,
            hash: None,
            object_id: None,
            checked: None,
        })
        .collect();
    for r in records {
        if let Some(c) = chunks.get_mut(r.index as usize) {
            c.state = r.state;
            c.hash = r.hash;
            c.object_id = r.object_id;
        }
    }
    let mut verified = vec![false; geometry.num_pieces() as usize];
    for p in catalog.verified_pieces(id)? {
        if let Some(v) = verified.get_mut(p as usize) {
            *v = true;
        }
    }

    let dir = files::torrent_dir(root, &t.uid);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let index = name
                .parse::<u32>()
                .ok()
                .filter(|&i| (i as usize) < chunks.len());
            let Some(index) = index else {
                tracing::info!(path = %path.display(), "removing stray cache file");
                let _ = files::remove(&path);
                continue;
            };
            // Present, but not trusted: a complete chunk is hashed against its recorded
            // hash on first use (a torn fetch or a damaged file fails there). Its length
            // says nothing: trailing pad bytes are never written.
            chunks[index as usize].present = true;
        }
    }

    // Verified pieces whose bytes are neither local nor in the remote are forgotten.
    let mut lost_pieces = Vec::new();
    let mut lost_chunks = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        if c.present || c.state == ChunkState::Uploaded {
            continue;
        }
        let pieces = geometry.pieces_of_chunk(ChunkIndex(i as u32));
        let had: Vec<u32> = pieces.filter(|&p| verified[p as usize]).collect();
        if had.is_empty() && c.state == ChunkState::Partial {
            continue;
        }
        tracing::warn!(torrent = %id, chunk = i, "chunk bytes lost from the cache; will download again");
        lost_pieces.extend(had);
        lost_chunks.push(i as u32);
    }
    if !lost_chunks.is_empty() {
        lost_pieces.sort_unstable();
        lost_pieces.dedup();
        catalog.unverify(id, &lost_pieces, &lost_chunks)?;
        for &p in &lost_pieces {
            verified[p as usize] = false;
        }
        for &c in &lost_chunks {
            let e = &mut chunks[c as usize];
            e.state = ChunkState::Partial;
            e.hash = None;
            e.object_id = None;
        }
        // A complete neighbour that shared a lost piece is complete no more.
        for (i, e) in chunks.iter_mut().enumerate() {
            let pieces = geometry.pieces_of_chunk(ChunkIndex(i as u32));
            let broken = pieces.clone().any(|p| !verified[p as usize]);
            if broken && e.state == ChunkState::Complete {
                catalog.unverify(id, &[], &[i as u32])?;
                e.state = ChunkState::Partial;
                e.hash = None;
                e.object_id = None;
            }
        }
    }
    let verified_count = verified.iter().filter(|&&v| v).count() as u32;
    Ok(Some(TorrentEntry {
        uid: t.uid,
        geometry,
        chunks,
        durable: verified.clone(),
        verified,
        verified_count,
        pinned: t.seeding && t.pin,
    }))
}
