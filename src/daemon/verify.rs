//! `bae verify`: re-check every complete chunk of a torrent — its local copy against
//! the recorded hash, and its remote object (fetched, decrypted, hash-checked).

use std::sync::Arc;

use crate::model::{ChunkKey, TorrentId};
use crate::store::{ChunkSource, Store};

use super::control::VerifyReport;

pub async fn verify(store: &Arc<Store>, source: &dyn ChunkSource, t: TorrentId) -> VerifyReport {
    let mut report = VerifyReport::default();
    let Some(stats) = store.torrent_stats(t) else {
        report
            .problems
            .push("torrent has no data in the store".into());
        return report;
    };
    for i in 0..stats.chunks_total {
        let key = ChunkKey::new(t, i);
        let mut checked = false;
        let mut ok = true;
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.check_local(key)).await {
            Ok(Ok(Some(true))) => checked = true,
            Ok(Ok(Some(false))) => {
                checked = true;
                ok = false;
                report
                    .problems
                    .push(format!("chunk {i}: local copy does not match its hash"));
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                ok = false;
                report.problems.push(format!("chunk {i}: {e}"));
            }
            Err(e) => report.problems.push(format!("chunk {i}: {e}")),
        }
        if let Some(remote) = store.remote_chunk(key) {
            checked = true;
            if let Err(e) = source.fetch(&remote).await {
                ok = false;
                if matches!(e, crate::store::FetchError::NotFound) {
                    report.chunks_missing += 1;
                }
                report
                    .problems
                    .push(format!("chunk {i} in the remote: {e}"));
            }
        }
        if checked {
            report.chunks_checked += 1;
            report.chunks_ok += u32::from(ok);
        }
    }
    report
}
