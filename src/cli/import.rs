//! `bae import DIR`: make a torrent of a local album folder, store its content as
//! verified chunks (through the daemon if one runs, else directly), and seed it.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::catalog::NewTorrent;
use crate::daemon::config::parse_size;
use crate::daemon::control::{Request, Response};
use crate::daemon::storage::layout_of;
use crate::torrent::{create_torrent, parse_metainfo};

use super::{ask_daemon, open_library, OfflineStore};

pub fn run(
    home: &Path,
    dir: &Path,
    piece_size: Option<&str>,
    trackers: &[String],
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let piece_len = piece_size.map(parse_size).transpose()?;
    let dir =
        std::fs::canonicalize(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    if let Some(out) = out {
        if out.exists() {
            bail!("{} already exists", out.display());
        }
    }
    let bytes = create_torrent(&dir, piece_len, trackers)?;
    let meta = parse_metainfo(&bytes)?;
    let layout = layout_of(&meta.layout);
    layout.validate()?;

    let lib = open_library(home)?;
    let id = lib.catalog.add_torrent(&NewTorrent {
        info_hash_v1: meta.info_hash_v1(),
        info_hash_v2: meta.info_hash_v2(),
        name: meta.name.clone(),
        magnet: None,
        metainfo: Some(meta.torrent_bytes.clone()),
        paused: false,
        peers: Vec::new(),
        ..Default::default()
    })?;
    let result = (|| -> anyhow::Result<u64> {
        lib.catalog.set_layout(id, &layout, None, None)?;
        let req = Request::Import {
            torrent: id.0,
            dir: dir.display().to_string(),
        };
        match ask_daemon(&lib, &req, Duration::from_secs(3600))? {
            Some(Response::Done { .. }) => {
                Ok(layout.files.iter().filter(|f| !f.pad).map(|f| f.len).sum())
            }
            Some(Response::Error { message }) => bail!("{message}"),
            Some(_) => bail!("unexpected answer from the daemon"),
            None => {
                // No daemon: hold the library lock while writing into the store.
                let off = OfflineStore::open(&lib)?;
                let n = crate::daemon::import::store_content(&off.store, id, &dir, &layout)?;
                off.close()?;
                Ok(n)
            }
        }
    })();
    let stored = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = lib.catalog.remove_torrent(id);
            return Err(e);
        }
    };
    if let Some(out) = out {
        std::fs::write(out, &meta.torrent_bytes)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    println!(
        "imported {} ({} bytes, info hash {})",
        meta.name,
        stored,
        meta.info_hash_v1()
            .map(hex::encode)
            .or(meta.info_hash_v2().map(hex::encode))
            .unwrap_or_default()
    );
    Ok(())
}
