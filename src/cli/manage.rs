//! `bae seed`, `pause`, `resume`, `remove`, `verify`, `evict`: change the catalog, then
//! let a running daemon catch up.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use crate::daemon::control::{Request, Response, VerifyReport};
use crate::tiering::Fetcher;

use super::{ask_daemon, nudge_daemon, open_library, runtime, OfflineStore};

pub fn seed(home: &Path, query: &str, on: bool, pin: bool) -> anyhow::Result<()> {
    let lib = open_library(home)?;
    let t = lib.catalog.find(query)?;
    lib.catalog.set_seeding(t.id, on, pin)?;
    nudge_daemon(&lib)?;
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
    nudge_daemon(&lib)?;
    println!("{}: {}", t.name, if paused { "paused" } else { "resumed" });
    Ok(())
}

pub fn remove(home: &Path, query: &str, purge: bool) -> anyhow::Result<()> {
    let lib = open_library(home)?;
    let t = lib.catalog.find(query)?;
    // One transaction removes the torrent and records the remote clean-up it needs, so
    // an interruption below leaks nothing: the daemon (or the next remove) finishes it.
    let objects = lib.catalog.remove_torrent_with_cleanup(t.id, purge)?;
    nudge_daemon(&lib)?;
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
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!(
        "deleting {} objects from the remote",
        pending.len()
    ));
    let done = rt.block_on(crate::tiering::journal::cleanup(&remote, &t.uid, &pending));
    bar.finish_and_clear();
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

pub fn verify(home: &Path, query: &str) -> anyhow::Result<()> {
    let lib = open_library(home)?;
    let t = lib.catalog.find(query)?;
    let report = match ask_daemon(
        &lib,
        &Request::Verify { torrent: t.id.0 },
        Duration::from_secs(24 * 3600),
    )? {
        Some(Response::Verify(r)) => r,
        Some(other) => bail!("unexpected answer from the daemon: {other:?}"),
        None => {
            let off = OfflineStore::open(&lib)?;
            let remote = off.rt.block_on(lib.remote())?;
            let fetcher = Arc::new(Fetcher::new(remote, lib.key.clone()));
            off.store.register_torrent(t.id)?;
            let r: VerifyReport = off
                .rt
                .block_on(crate::daemon::verify::verify(&off.store, &*fetcher, t.id));
            off.close()?;
            r
        }
    };
    for p in &report.problems {
        println!("problem: {p}");
    }
    println!(
        "{}: {} chunks checked, {} ok, {} missing from the remote",
        t.name, report.chunks_checked, report.chunks_ok, report.chunks_missing
    );
    if !report.problems.is_empty() {
        bail!("{} failed verification", t.name);
    }
    Ok(())
}

pub fn evict(home: &Path) -> anyhow::Result<()> {
    let lib = open_library(home)?;
    match ask_daemon(&lib, &Request::Evict, Duration::from_secs(60))? {
        Some(Response::Done { message }) => println!("{message}"),
        Some(other) => bail!("unexpected answer from the daemon: {other:?}"),
        None => {
            // Opening the store loads every torrent with its pins from the catalog.
            let off = OfflineStore::open(&lib)?;
            let n = off.store.evict_all();
            off.close()?;
            println!("evicted {n} chunks");
        }
    }
    Ok(())
}
