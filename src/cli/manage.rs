//! `bae seed`, `pause`, `resume`, `remove`, `verify`, `evict`: change the catalog, then
//! let a running daemon catch up.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use crate::daemon::control::{Request, Response, VerifyReport};
use crate::tiering::Fetcher;

use super::progress::{Progress, Unit};
use super::{ask_daemon, nudge_daemon, open_library, runtime, OfflineStore};

pub fn seed(home: &Path, query: &str, on: bool, pin: bool) -> anyhow::Result<()> {
    let lib = open_library(home)?;
    let t = lib.catalog.find(query)?;
    lib.catalog.set_seeding(t.id, on, pin)?;
    nudge_daemon(&lib, &[t.id])?;
    match (on, pin) {
        (true, true) => println!("{}: seeding, chunks pinned in the cache", t.name),
        (true, false) => println!(
            "{}: seeding without pinning (evicted chunks come back from the remote)",
            t.name
        ),
        (false, _) => println!("{}: not seeding", t.name),
    }
    Ok(())
}

pub fn pause(home: &Path, query: &str, paused: bool) -> anyhow::Result<()> {
    let lib = open_library(home)?;
    let t = lib.catalog.find(query)?;
    lib.catalog.set_paused(t.id, paused)?;
    nudge_daemon(&lib, &[t.id])?;
    println!("{}: {}", t.name, if paused { "paused" } else { "resumed" });
    Ok(())
}

pub fn remove(home: &Path, query: &str, purge: bool) -> anyhow::Result<()> {
    let lib = open_library(home)?;
    let t = lib.catalog.find(query)?;
    // One transaction removes the torrent and records the remote clean-up it needs, so
    // an interruption below leaks nothing: the daemon (or the next remove) finishes it.
    let objects = lib.catalog.remove_torrent_with_cleanup(t.id, purge)?;
    nudge_daemon(&lib, &[t.id])?;
    // With no daemon the chunk files go now; a daemon removed them in its sync.
    let dir = crate::store::torrent_cache_dir(&lib.cache_dir(), &t.uid);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("warning: could not delete {}: {e}", dir.display());
        }
    }
    let rt = runtime()?;
    let remote = rt.block_on(lib.remote())?;
    let pending = if purge { objects.clone() } else { Vec::new() };
    let done = if pending.is_empty() {
        rt.block_on(crate::tiering::journal::cleanup(&remote, &t.uid, &pending))
    } else {
        let bar = std::sync::Mutex::new(Progress::new(
            format!("deleting {} from the remote", t.name),
            Unit::Items("objects"),
        ));
        let on_progress = |done: u64, total: u64| {
            bar.lock()
                .unwrap_or_else(|e| e.into_inner())
                .set(done, total)
        };
        let done = rt.block_on(crate::tiering::journal::cleanup_with_progress(
            &remote,
            &t.uid,
            &pending,
            &on_progress,
        ));
        let bar = bar.into_inner().unwrap_or_else(|e| e.into_inner());
        if done.is_ok() {
            bar.finish();
        }
        done
    };
    match done {
        Ok(()) => lib.catalog.cleanup_done(&t.uid)?,
        Err(e) => bail!(
            "{} removed here, but the remote could not be cleaned up yet ({e}); it is retried \
             by the daemon or the next `bae remove`",
            t.name
        ),
    }
    if purge {
        println!(
            "{} removed, with its {} objects in the remote",
            t.name,
            objects.len()
        );
    } else {
        println!(
            "{} removed (its encrypted chunks stay in the remote; --purge deletes them)",
            t.name
        );
    }
    Ok(())
}

pub fn verify(home: &Path, query: &str, repair: bool) -> anyhow::Result<()> {
    let lib = open_library(home)?;
    let t = lib.catalog.find(query)?;
    let mut bar = Progress::new(format!("verifying {}", t.name), Unit::Items("checks"));
    let mut on_progress = |done: u64, total: u64| bar.set(done, total);
    let answer = runtime()?.block_on(crate::daemon::control::call_with_progress(
        &lib.socket_path(),
        &Request::Verify { torrent: t.id.0 },
        Duration::from_secs(24 * 3600),
        &mut on_progress,
    ));
    let report = match answer {
        Ok(Response::Verify(r)) => r,
        Ok(Response::Error { message }) => bail!("the daemon refused: {message}"),
        Ok(other) => bail!("unexpected answer from the daemon: {other:?}"),
        Err(crate::daemon::control::ControlError::NotRunning) => {
            let off = OfflineStore::open(&lib)?;
            let remote = off.rt.block_on(lib.remote())?;
            let fetcher = Arc::new(Fetcher::new(remote, lib.key.clone()));
            off.store.register_torrent(t.id)?;
            let r: VerifyReport = off.rt.block_on(crate::daemon::verify::verify_with_progress(
                &off.store,
                &*fetcher,
                t.id,
                &mut on_progress,
            ));
            off.close()?;
            r
        }
        Err(e) => return Err(e.into()),
    };
    bar.finish();
    for p in &report.problems {
        println!("problem: {p}");
    }
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    if !report.bad_pieces.is_empty() {
        println!("bad pieces: {}", list(&report.bad_pieces));
    }
    if !report.bad_local_chunks.is_empty() {
        println!("bad local chunks: {}", list(&report.bad_local_chunks));
    }
    if !report.bad_remote_chunks.is_empty() {
        println!("bad remote chunks: {}", list(&report.bad_remote_chunks));
    }
    if !report.missing_remote_chunks.is_empty() {
        println!(
            "chunks missing from the remote: {}",
            list(&report.missing_remote_chunks)
        );
    }
    if !report.unreachable_remote_chunks.is_empty() {
        println!(
            "chunks the remote did not answer for: {}",
            list(&report.unreachable_remote_chunks)
        );
    }
    let uncheckable = if report.pieces_uncheckable > 0 {
        format!(" ({} with no hash to check)", report.pieces_uncheckable)
    } else {
        String::new()
    };
    println!(
        "{}: {} of {} pieces checked locally, {} ok{uncheckable}; {} chunks checked, {} ok, {} missing from the remote",
        t.name,
        report.pieces_checked,
        report.pieces_total,
        report.pieces_ok,
        report.chunks_checked,
        report.chunks_ok,
        report.chunks_missing
    );
    if report.is_ok() {
        return Ok(());
    }
    if !repair {
        bail!(
            "{} failed verification (`bae verify --repair` replaces what is damaged)",
            t.name
        );
    }
    let mut bad_local = report.bad_local_chunks.clone();
    if let Some(g) = t.geometry {
        for &p in &report.bad_pieces {
            bad_local.extend(g.chunks_of_piece(crate::model::PieceIndex(p)));
        }
    }
    bad_local.sort_unstable();
    bad_local.dedup();
    let mut bad_remote = report.bad_remote_chunks.clone();
    bad_remote.extend(&report.missing_remote_chunks);
    let req = Request::Repair {
        torrent: t.id.0,
        bad_local: bad_local.clone(),
        bad_remote: bad_remote.clone(),
    };
    let summary = match ask_daemon(&lib, &req, Duration::from_secs(600))? {
        Some(Response::Repaired(s)) => s,
        Some(Response::Error { message }) => bail!("the daemon refused: {message}"),
        Some(other) => bail!("unexpected answer from the daemon: {other:?}"),
        None => {
            let off = OfflineStore::open(&lib)?;
            off.store.register_torrent(t.id)?;
            let s = off.store.repair(t.id, &bad_local, &bad_remote);
            off.close()?;
            s
        }
    };
    println!(
        "repair: {} chunks fetched again from the remote when next read, {} uploaded again, {} to download again from peers",
        summary.refetch, summary.reupload, summary.redownload
    );
    if !report.unreachable_remote_chunks.is_empty() {
        bail!(
            "{} chunks could not be checked (the remote did not answer); run verify again",
            report.unreachable_remote_chunks.len()
        );
    }
    Ok(())
}

pub fn evict(home: &Path) -> anyhow::Result<()> {
    let lib = open_library(home)?;
    let mut bar = Progress::new("evicting cached chunks", Unit::Items("chunks"));
    let mut on_progress = |done: u64, total: u64| bar.set(done, total);
    let answer = runtime()?.block_on(crate::daemon::control::call_with_progress(
        &lib.socket_path(),
        &Request::Evict,
        Duration::from_secs(3600),
        &mut on_progress,
    ));
    let message = match answer {
        Ok(Response::Done { message }) => message,
        Ok(Response::Error { message }) => bail!("the daemon refused: {message}"),
        Ok(other) => bail!("unexpected answer from the daemon: {other:?}"),
        Err(crate::daemon::control::ControlError::NotRunning) => {
            // Opening the store loads every torrent with its pins from the catalog.
            let off = OfflineStore::open(&lib)?;
            let n = off.store.evict_all_with_progress(&mut on_progress);
            off.close()?;
            format!("evicted {n} chunks")
        }
        Err(e) => return Err(e.into()),
    };
    bar.finish();
    println!("{message}");
    Ok(())
}
