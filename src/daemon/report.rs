//! Building `status` reports: from the live daemon, or from the catalog alone.

use std::path::Path;

use crate::catalog::{Catalog, CatalogError, TorrentRecord};
use crate::model::ChunkState;
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
    r.chunks_uploaded = s.chunks_uploaded;
    if r.size_bytes > 0 {
        r.progress = s.bytes_verified as f64 / r.size_bytes as f64;
    }
}

pub fn state_name(s: TorrentState, paused: bool) -> &'static str {
    if paused {
        return "paused";
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
    let mut out = Vec::new();
    for t in catalog.torrents()? {
        let mut r = base(&t);
        if let Some(s) = store.torrent_stats(t.id) {
            apply_stats(&mut r, &s);
        }
        if let Ok(st) = session.status(t.id) {
            r.download_bps = st.download_rate_bps;
            r.upload_bps = st.upload_rate_bps;
            r.peers = st.peers;
            r.state = state_name(st.state, st.paused).into();
            r.error = st.error;
        }
        (r.peer_downloaded_bytes, r.peer_uploaded_bytes) = super::metrics::peer_bytes_of(t.id.0);
        out.push(r);
    }
    Ok(out)
}

/// A report with no daemon: what the catalog and the cache directory say.
pub fn offline(catalog: &Catalog, cache_dir: &Path) -> Result<StatusReport, CatalogError> {
    let mut report = StatusReport::default();
    for t in catalog.torrents()? {
        let mut r = base(&t);
        let chunks = catalog.chunks(t.id)?;
        let dir = crate::store::torrent_cache_dir(cache_dir, &t.uid);
        let mut s = TorrentStats {
            chunks_total: chunks.len() as u32,
            ..Default::default()
        };
        for c in &chunks {
            let local = dir.join(c.index.to_string()).exists();
            s.chunks_local += u32::from(local);
            s.chunks_uploaded += u32::from(c.state == ChunkState::Uploaded);
            if local {
                report.cache.used_bytes += c.len;
                report.cache.present_chunks += 1;
                if c.state != ChunkState::Uploaded {
                    report.cache.not_uploaded_bytes += c.len;
                }
            }
        }
        if let Some(g) = t.geometry {
            s.bytes_verified = catalog
                .verified_pieces(t.id)?
                .into_iter()
                .map(|p| g.piece_size(crate::model::PieceIndex(p)))
                .sum();
        }
        apply_stats(&mut r, &s);
        report.torrents.push(r);
    }
    Ok(report)
}
