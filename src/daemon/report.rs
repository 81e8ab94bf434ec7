//! Building `status` reports: from the live daemon, or from the catalog alone.

use std::path::Path;

use crate::catalog::{Catalog, CatalogError, TorrentRecord};
use crate::model::{ChunkState, Geometry};
use crate::store::{Store, TorrentStats};
use crate::torrent::{Session, TorrentState};

use super::control::{StatusReport, TorrentReport};

fn base(t: &TorrentRecord) -> TorrentReport {
    TorrentReport {
        id: t.id.0,
        name: t.name.clone(),
        info_hash: t.info_hash_hex(),
        size_bytes: t.geometry.map(|g| g.total_len()).unwrap_or(0),
        seeding: t.seeding,
        pinned: t.seeding && t.pin,
        paused: t.paused,
        state: if t.geometry.is_none() {
            "metadata".into()
        } else if t.paused {
            "paused".into()
        } else {
            "stopped".into()
        },
        ..Default::default()
    }
}

fn apply_stats(r: &mut TorrentReport, s: &TorrentStats) {
    r.chunks_total = s.chunks_total;
    r.chunks_local = s.chunks_local;
    r.chunks_complete = s.chunks_complete;
    r.chunks_uploaded = s.chunks_uploaded;
    if r.size_bytes > 0 {
        r.progress = s.bytes_verified as f64 / r.size_bytes as f64;
    }
}

/// `paused_by_user` is the catalog's flag; libtorrent also pauses torrents waiting for
/// a slot of `network.active_*` (its queue): those are "queued", not "paused".
pub fn state_name(s: TorrentState, paused_in_session: bool, paused_by_user: bool) -> &'static str {
    if paused_by_user {
        return "paused";
    }
    if paused_in_session {
        return "queued";
    }
    match s {
        TorrentState::CheckingFiles | TorrentState::CheckingResume => "checking",
        TorrentState::DownloadingMetadata => "metadata",
        TorrentState::Downloading => "downloading",
        TorrentState::Finished => "finished",
        TorrentState::Seeding => "seeding",
    }
}

/// A report from the running daemon's own store and session.
pub fn live(
    catalog: &Catalog,
    store: &Store,
    session: &Session,
) -> Result<Vec<TorrentReport>, CatalogError> {
    Ok(catalog
        .torrents()?
        .iter()
        .map(|t| live_one(t, store, session))
        .collect())
}

/// One torrent's part of [`live`].
pub fn live_one(t: &TorrentRecord, store: &Store, session: &Session) -> TorrentReport {
    let mut r = base(t);
    // A torrent the store does not know yet (added, not opened by libtorrent yet)
    // has no local chunk: its catalog row has every other count.
    let stats = store
        .torrent_stats(t.id)
        .or_else(|| t.geometry.map(|g| recorded_stats(t, g)));
    if let Some(s) = stats {
        apply_stats(&mut r, &s);
    }
    match session.status(t.id) {
        Ok(st) => {
            r.download_bps = st.download_rate_bps;
            r.upload_bps = st.upload_rate_bps;
            r.peers = st.peers;
            r.state = state_name(st.state, st.paused, t.paused).into();
            r.error = st.error;
        }
        // Not in the session: complete and not seeding (its reads are the store's).
        Err(_) if !t.paused && r.size_bytes > 0 && r.progress >= 1.0 => {
            r.state = "complete".into();
        }
        Err(_) => {}
    }
    (r.peer_downloaded_bytes, r.peer_uploaded_bytes) = super::metrics::peer_bytes_of(t.id.0);
    r
}

/// A torrent's counts as its catalog row keeps them (no local chunks counted).
fn recorded_stats(t: &TorrentRecord, g: Geometry) -> TorrentStats {
    TorrentStats {
        chunks_total: g.num_chunks(),
        chunks_uploaded: t.n_uploaded,
        chunks_complete: t.n_complete,
        pieces_total: g.num_pieces(),
        pieces_verified: t.n_verified,
        bytes_verified: (u64::from(t.n_verified) * g.piece_len()).min(g.total_len()),
        ..Default::default()
    }
}

/// A report with no daemon: what the catalog and the cache directory say. Reads the
/// per-torrent counts and lists only cache directories that exist.
pub fn offline(catalog: &Catalog, cache_dir: &Path) -> Result<StatusReport, CatalogError> {
    let mut report = StatusReport::default();
    for t in catalog.torrents()? {
        let mut r = base(&t);
        let Some(g) = t.geometry else {
            report.torrents.push(r);
            continue;
        };
        let mut s = recorded_stats(&t, g);
        let dir = crate::store::torrent_cache_dir(cache_dir, &t.uid);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let local: Vec<u32> = entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&c| c < g.num_chunks())
                .collect();
            for c in local {
                let len = g.chunk_len(crate::model::ChunkIndex(c));
                s.chunks_local += 1;
                report.cache.used_bytes += len;
                report.cache.present_chunks += 1;
                let uploaded = catalog
                    .chunk(crate::model::ChunkKey::new(t.id, c))?
                    .is_some_and(|c| c.state == ChunkState::Uploaded);
                if !uploaded {
                    report.cache.not_uploaded_bytes += len;
                }
            }
        }
        apply_stats(&mut r, &s);
        report.torrents.push(r);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_is_not_paused() {
        let s = TorrentState::Downloading;
        assert_eq!(state_name(s, true, true), "paused");
        assert_eq!(state_name(s, true, false), "queued");
        assert_eq!(state_name(s, false, false), "downloading");
        assert_eq!(
            state_name(TorrentState::CheckingResume, false, false),
            "checking"
        );
    }
}
