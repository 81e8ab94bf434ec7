//! `bae import DIR`: make a torrent of a local album folder (or take an existing one with
//! `--torrent`, to seed an album already on disk), store its content as chunks checked
//! against the torrent's piece hashes (through the daemon if one runs, else directly),
//! and seed it.
//!
//! The torrent is recorded paused until its content is stored, so a daemon never starts
//! it with no data; a failed import removes the row again: nothing is left behind.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::catalog::NewTorrent;
use crate::daemon::config::parse_size;
use crate::daemon::control::{Request, Response};
use crate::daemon::storage::layout_of;
use crate::torrent::{create_torrent_with_progress, parse_metainfo};

use super::progress::{Progress, Unit};
use super::{ask_daemon_with_progress, nudge_daemon, open_library, OfflineStore};

/// What `bae import` was asked for.
pub struct ImportArgs<'a> {
    pub dir: &'a Path,
    pub torrent: Option<&'a Path>,
    pub piece_size: Option<&'a str>,
    pub trackers: &'a [String],
    pub out: Option<&'a Path>,
}

pub fn run(home: &Path, args: &ImportArgs<'_>) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(args.dir)
        .with_context(|| format!("cannot open {}", args.dir.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if let Some(out) = args.out {
        if out.exists() {
            bail!("{} already exists", out.display());
        }
    }
    let bytes = match args.torrent {
        Some(t) => std::fs::read(t).with_context(|| format!("cannot read {}", t.display()))?,
        None => {
            let piece_len = args.piece_size.map(parse_size).transpose()?;
            let mut hashing =
                Progress::new(format!("hashing {}", dir.display()), Unit::Items("pieces"));
            let bytes =
                create_torrent_with_progress(&dir, piece_len, args.trackers, &mut |d, t| {
                    hashing.set(d, t)
                })?;
            hashing.clear();
            bytes
        }
    };
    let meta = parse_metainfo(&bytes).with_context(|| match args.torrent {
        Some(t) => format!("{} is not a valid torrent", t.display()),
        None => "the new torrent".into(),
    })?;
    let layout = layout_of(&meta.layout);
    layout.validate()?;

    let lib = open_library(home)?;
    let id = lib.catalog.add_torrent(&NewTorrent {
        info_hash_v1: meta.info_hash_v1(),
        info_hash_v2: meta.info_hash_v2(),
        name: meta.name.clone(),
        magnet: None,
        metainfo: Some(meta.torrent_bytes.clone()),
        paused: true,
        peers: Vec::new(),
        ..Default::default()
    })?;
    let result = (|| -> anyhow::Result<u64> {
        lib.catalog.set_layout(id, &layout, None, None)?;
        let req = Request::Import {
            torrent: id.0,
            dir: dir.display().to_string(),
        };
        let mut bar = Progress::new(format!("importing {}", meta.name), Unit::Bytes);
        let mut on_progress = |done: u64, total: u64| bar.set(done, total);
        let timeout = Duration::from_secs(24 * 3600);
        let stored = match ask_daemon_with_progress(&lib, &req, timeout, &mut on_progress)? {
            Some(Response::Done { .. }) => {
                layout.files.iter().filter(|f| !f.pad).map(|f| f.len).sum()
            }
            Some(Response::Error { message }) => bail!("{message}"),
            Some(_) => bail!("unexpected answer from the daemon"),
            None => {
                // No daemon: hold the library lock while writing into the store.
                let off = OfflineStore::open(&lib)?;
                let r = crate::daemon::import::store_content(
                    &off.store,
                    id,
                    &dir,
                    &layout,
                    &mut on_progress,
                );
                off.close()?;
                r?
            }
        };
        bar.finish();
        lib.catalog.set_paused(id, false)?;
        Ok(stored)
    })();
    let stored = match result {
        Ok(n) => n,
        Err(e) => {
            if let Err(re) = lib.catalog.remove_torrent(id) {
                eprintln!("warning: could not remove the failed import: {re}");
            }
            // A daemon that picked the row up meanwhile drops it again.
            let _ = nudge_daemon(&lib, &[id]);
            return Err(e);
        }
    };
    nudge_daemon(&lib, &[id])?;
    if let Some(out) = args.out {
        std::fs::write(out, &meta.torrent_bytes)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    println!(
        "imported {} ({} bytes, every piece checked, info hash {})",
        meta.name,
        stored,
        meta.info_hash_v1()
            .map(hex::encode)
            .or(meta.info_hash_v2().map(hex::encode))
            .unwrap_or_default()
    );
    Ok(())
}
