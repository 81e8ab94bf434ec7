//! `bae verify`: checks what the library holds of one torrent against the truth.
//!
//! - Local pieces: every verified piece whose chunks all have a local file is read
//!   through the store and checked against the torrent's own piece hashes (v1 SHA-1,
//!   v2 Merkle). Evicted chunks are not fetched for this: the remote is checked apart.
//! - Local chunks that some verified piece leaves unchecked (it also covers an evicted
//!   chunk, or no hash covers it) are re-hashed against their recorded hash.
//! - Remote objects: every uploaded chunk is fetched, decrypted, authenticated and
//!   hash-checked (the fetcher's path), without entering the cache.
//!
//! Checks run a few at a time ([`PARALLEL_CHECKS`]); progress goes to the caller's
//! callback (the control socket's progress lines). The report lists bad pieces and bad
//! or missing chunks by index, so a repair can act on them.

use std::sync::Arc;

use futures::StreamExt;

use crate::catalog::{Catalog, Layout, TorrentRecord};
use crate::model::{ChunkKey, Geometry, PieceIndex, TorrentId};
use crate::store::{ChunkSource, FetchError, Store, StoreError};
use crate::torrent::{PieceCheck, PieceHashes};

use super::control::{report_progress, VerifyReport};
use super::import::piece_hashes;

/// Checks in flight at once: enough to overlap disk reads, hashing and remote GETs on a
/// small machine without crowding out the daemon's own work.
pub const PARALLEL_CHECKS: usize = 6;

enum Job {
    Piece(u32),
    LocalChunk(u32),
    Remote(u32),
}

enum Outcome {
    /// `Ok(None)`: the piece is no longer all local (evicted meanwhile): not checked.
    Piece(u32, Result<Option<PieceCheck>, String>),
    LocalChunk(u32, Result<Option<bool>, String>),
    Remote(u32, Result<(), FetchError>),
}

/// Verifies torrent `t`, reporting progress on the control socket (when inside a
/// control request).
pub async fn verify(store: &Arc<Store>, source: &dyn ChunkSource, t: TorrentId) -> VerifyReport {
    verify_with_progress(store, source, t, &mut report_progress).await
}

/// Verifies torrent `t`; `progress(done, total)` is called as checks finish.
pub async fn verify_with_progress(
    store: &Arc<Store>,
    source: &dyn ChunkSource,
    t: TorrentId,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> VerifyReport {
    let mut report = VerifyReport::default();
    let (Some(geometry), Some(present)) = (store.geometry(t), store.local_chunks(t)) else {
        report
            .problems
            .push("torrent has no data in the store".into());
        return report;
    };
    let verified = match store.verified_pieces(t) {
        Ok(v) => v,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    report.pieces_total = geometry.num_pieces();
    let hashes = match load_hashes(store.catalog(), t) {
        Ok(h) => Some(h),
        Err(e) => {
            report
                .problems
                .push(format!("cannot check pieces against the torrent: {e}"));
            None
        }
    };
    let jobs = plan(
        geometry,
        &verified,
        &present,
        hashes.as_ref(),
        store,
        t,
        &mut report,
    );
    let total = jobs.len() as u64;
    progress(0, total);
    let hashes = hashes.map(Arc::new);
    let mut results = futures::stream::iter(jobs)
        .map(|job| run_job(job, store, source, t, geometry, hashes.clone()))
        .buffer_unordered(PARALLEL_CHECKS);
    let mut done = 0u64;
    while let Some(outcome) = results.next().await {
        record(&mut report, outcome);
        done += 1;
        progress(done, total);
    }
    report.bad_pieces.sort_unstable();
    report.bad_local_chunks.sort_unstable();
    report.bad_remote_chunks.sort_unstable();
    report.missing_remote_chunks.sort_unstable();
    report.unreachable_remote_chunks.sort_unstable();
    report.chunks_missing = report.missing_remote_chunks.len() as u32;
    report
}

/// The torrent's piece hashes, checked to belong to the info hash it is known by.
fn load_hashes(catalog: &Catalog, t: TorrentId) -> Result<PieceHashes, String> {
    let rec: TorrentRecord = catalog.torrent(t).map_err(|e| e.to_string())?;
    let layout: Layout = catalog
        .layout(t)
        .map_err(|e| e.to_string())?
        .ok_or("its layout is not known yet")?;
    let metainfo = catalog
        .metainfo(t)
        .map_err(|e| e.to_string())?
        .ok_or("its metadata is not known yet")?;
    let hashes = piece_hashes(&metainfo, &layout).map_err(|e| e.to_string())?;
    let v1_ok = match (hashes.info_hash_v1(), rec.info_hash_v1) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    let v2_ok = match (hashes.info_hash_v2(), rec.info_hash_v2) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    if !(v1_ok && v2_ok) {
        return Err("the recorded metainfo does not match the torrent's info hash".into());
    }
    Ok(hashes)
}

/// What to check: local pieces, local chunks those leave unchecked, remote objects.
fn plan(
    g: Geometry,
    verified: &[bool],
    present: &[bool],
    hashes: Option<&PieceHashes>,
    store: &Store,
    t: TorrentId,
    report: &mut VerifyReport,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut checked_piece = vec![false; verified.len()];
    for p in 0..g.num_pieces() {
        if !verified.get(p as usize).copied().unwrap_or(false) {
            continue;
        }
        let Some(h) = hashes else { continue };
        if !h.can_check(PieceIndex(p)) {
            report.pieces_uncheckable += 1;
            continue;
        }
        let local = g
            .chunks_of_piece(PieceIndex(p))
            .all(|c| present.get(c as usize).copied().unwrap_or(false));
        if local {
            checked_piece[p as usize] = true;
            jobs.push(Job::Piece(p));
        }
    }
    for c in 0..g.num_chunks() {
        if !present.get(c as usize).copied().unwrap_or(false) {
            continue;
        }
        let unchecked = g.pieces_of_chunk(crate::model::ChunkIndex(c)).any(|p| {
            verified.get(p as usize).copied().unwrap_or(false) && !checked_piece[p as usize]
        });
        if unchecked {
            jobs.push(Job::LocalChunk(c));
        }
    }
    for c in 0..g.num_chunks() {
        if store.remote_chunk(ChunkKey::new(t, c)).is_some() {
            jobs.push(Job::Remote(c));
        }
    }
    jobs
}

async fn run_job(
    job: Job,
    store: &Arc<Store>,
    source: &dyn ChunkSource,
    t: TorrentId,
    g: Geometry,
    hashes: Option<Arc<PieceHashes>>,
) -> Outcome {
    match job {
        Job::Piece(p) => {
            let s = store.clone();
            let r = tokio::task::spawn_blocking(move || {
                let range = g.piece_range(PieceIndex(p));
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                match s.read_local_unchecked(t, range.start, &mut buf) {
                    Ok(()) => {}
                    Err(StoreError::NotLocal(_)) => return Ok(None),
                    Err(e) => return Err(e.to_string()),
                }
                let h = hashes.ok_or("no hashes")?;
                Ok(Some(h.check(PieceIndex(p), &buf)))
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            Outcome::Piece(p, r)
        }
        Job::LocalChunk(c) => {
            let s = store.clone();
            let r = tokio::task::spawn_blocking(move || s.check_local(ChunkKey::new(t, c)))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            Outcome::LocalChunk(c, r)
        }
        Job::Remote(c) => {
            let r = match store.remote_chunk(ChunkKey::new(t, c)) {
                Some(remote) => match source.fetch(&remote).await {
                    Ok(data) => remote.check(&data),
                    Err(e) => Err(e),
                },
                // No longer uploaded (removed meanwhile): nothing to check.
                None => Ok(()),
            };
            Outcome::Remote(c, r)
        }
    }
}

fn record(report: &mut VerifyReport, outcome: Outcome) {
    match outcome {
        Outcome::Piece(p, r) => {
            report.pieces_checked += 1;
            match r {
                Ok(None) => report.pieces_checked -= 1,
                Ok(Some(PieceCheck::Ok)) => report.pieces_ok += 1,
                Ok(Some(PieceCheck::Mismatch(kind))) => {
                    report.bad_pieces.push(p);
                    report.problems.push(format!(
                        "piece {p}: local copy does not match the torrent's {kind} hash"
                    ));
                }
                Ok(Some(PieceCheck::CannotCheck(reason))) => {
                    report.pieces_checked -= 1;
                    report.pieces_uncheckable += 1;
                    tracing::debug!(piece = p, %reason, "piece cannot be checked");
                }
                Err(e) => {
                    report.bad_pieces.push(p);
                    report
                        .problems
                        .push(format!("piece {p}: cannot read it: {e}"));
                }
            }
        }
        Outcome::LocalChunk(c, r) => match r {
            Ok(None) => {}
            Ok(Some(true)) => {
                report.chunks_checked += 1;
                report.chunks_ok += 1;
            }
            Ok(Some(false)) => {
                report.chunks_checked += 1;
                report.bad_local_chunks.push(c);
                report
                    .problems
                    .push(format!("chunk {c}: local copy does not match its hash"));
            }
            Err(e) => {
                report.chunks_checked += 1;
                report.bad_local_chunks.push(c);
                report.problems.push(format!("chunk {c}: {e}"));
            }
        },
        Outcome::Remote(c, r) => {
            report.chunks_checked += 1;
            match r {
                Ok(()) => report.chunks_ok += 1,
                Err(e) => {
                    match e {
                        FetchError::NotFound => report.missing_remote_chunks.push(c),
                        FetchError::Integrity(_) => report.bad_remote_chunks.push(c),
                        FetchError::Unavailable(_) | FetchError::NoRemote => {
                            report.unreachable_remote_chunks.push(c)
                        }
                    }
                    report
                        .problems
                        .push(format!("chunk {c} in the remote: {e}"));
                }
            }
        }
    }
}

/// At start-up, before libtorrent is told what the store has: verified pieces in chunks
/// not complete yet have no chunk hash to vouch for their local bytes (they may have been
/// changed while the daemon was stopped), so each is checked against the torrent's own
/// piece hash; those that fail are downloaded again. Costs the unfinished chunks'
/// verified bytes, never the library. Returns the number of pieces revoked.
pub fn recheck_unfinished_chunks(catalog: &Catalog, store: &Arc<Store>) -> usize {
    let mut revoked = 0;
    for t in store.torrent_ids() {
        let pieces = store.pieces_in_partial_chunks(t);
        if pieces.is_empty() {
            continue;
        }
        let hashes = match load_hashes(catalog, t) {
            Ok(h) => h,
            Err(e) => {
                // Without hashes nothing can vouch for them: download them again.
                tracing::warn!(torrent = %t, error = %e, "cannot check unfinished chunks");
                revoked += store.revoke_partial_pieces(t, &pieces, "no piece hashes to check them");
                continue;
            }
        };
        let Some(g) = store.geometry(t) else { continue };
        let bad: Vec<PieceIndex> = pieces
            .into_iter()
            .filter(|&p| {
                let range = g.piece_range(p);
                let mut buf = vec![0u8; (range.end - range.start) as usize];
                match store.read_local_unchecked(t, range.start, &mut buf) {
                    Ok(()) => !matches!(hashes.check(p, &buf), PieceCheck::Ok),
                    Err(e) => {
                        tracing::debug!(torrent = %t, piece = p.0, error = %e, "unfinished piece unreadable");
                        true
                    }
                }
            })
            .collect();
        if !bad.is_empty() {
            revoked += store.revoke_partial_pieces(
                t,
                &bad,
                "its local bytes changed while bae was stopped",
            );
        }
    }
    revoked
}
