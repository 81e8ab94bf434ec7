//! `bae add FILE.torrent | MAGNET`: record the torrent (durably) and hand it to the
//! daemon. With a .torrent the layout is recorded at once, so the mount shows the files
//! with exact sizes before any data arrives.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::catalog::NewTorrent;
use crate::daemon::control::{Request, Response};
use crate::daemon::storage::layout_of;
use crate::torrent::{parse_magnet, parse_metainfo};

use super::progress::{Progress, Unit};
use super::{ask_daemon, nudge_daemon, open_library};

pub fn run(
    home: &Path,
    source: &str,
    paused: bool,
    wait: bool,
    peers: &[String],
) -> anyhow::Result<()> {
    for p in peers {
        p.parse::<std::net::SocketAddr>()
            .with_context(|| format!("--peer {p:?} is not IP:PORT"))?;
    }
    // Parse everything before touching the library: bad input changes nothing.
    let (new, layout) = if source.starts_with("magnet:") {
        let m = parse_magnet(source)?;
        let name = m
            .display_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| {
                m.info_hash_v1
                    .map(hex::encode)
                    .or(m.info_hash_v2.map(hex::encode))
                    .unwrap_or_default()
            });
        (
            NewTorrent {
                info_hash_v1: m.info_hash_v1,
                info_hash_v2: m.info_hash_v2,
                name,
                magnet: Some(source.to_owned()),
                metainfo: None,
                paused,
                peers: peers.to_vec(),
                ..Default::default()
            },
            None,
        )
    } else {
        let bytes = std::fs::read(source).with_context(|| format!("cannot read {source}"))?;
        let meta =
            parse_metainfo(&bytes).with_context(|| format!("{source} is not a valid torrent"))?;
        let layout = layout_of(&meta.layout);
        layout
            .validate()
            .with_context(|| format!("{source} has an unsupported layout"))?;
        (
            NewTorrent {
                info_hash_v1: meta.info_hash_v1(),
                info_hash_v2: meta.info_hash_v2(),
                name: meta.name.clone(),
                magnet: None,
                metainfo: Some(meta.torrent_bytes.clone()),
                paused,
                peers: peers.to_vec(),
                ..Default::default()
            },
            Some(layout),
        )
    };
    let lib = open_library(home)?;
    let id = lib.catalog.add_torrent(&new)?;
    if let Some(layout) = layout {
        if let Err(e) = lib.catalog.set_layout(id, &layout, None, None) {
            let _ = lib.catalog.remove_torrent(id);
            return Err(e.into());
        }
    }
    nudge_daemon(&lib)?;
    println!("added {} ({})", new.name, hex_of(&new));
    if wait {
        wait_for(&lib, id.0)?;
    }
    Ok(())
}

fn hex_of(t: &NewTorrent) -> String {
    t.info_hash_v1
        .map(hex::encode)
        .or(t.info_hash_v2.map(hex::encode))
        .unwrap_or_default()
}

/// Shows a progress bar until the torrent is fully verified.
pub fn wait_for(lib: &crate::daemon::Library, id: i64) -> anyhow::Result<()> {
    let mut bar: Option<Progress> = None;
    loop {
        let Some(resp) = ask_daemon(lib, &Request::Status, Duration::from_secs(10))? else {
            bail!("--wait needs a running daemon (start one with `bae mount MOUNTPOINT`)");
        };
        let Response::Status(report) = resp else {
            bail!("unexpected answer from the daemon");
        };
        let Some(t) = report.torrents.iter().find(|t| t.id == id) else {
            bail!("the torrent was removed");
        };
        let b = bar
            .get_or_insert_with(|| Progress::new(format!("downloading {}", t.name), Unit::Bytes));
        if t.size_bytes > 0 {
            // Verified bytes: the daemon's own count, never an estimate.
            let done = (t.progress * t.size_bytes as f64) as u64;
            b.set(done.min(t.size_bytes), t.size_bytes);
        }
        if let Some(e) = &t.error {
            bail!("{}: {e}", t.name);
        }
        if t.size_bytes > 0 && t.progress >= 1.0 {
            if let Some(b) = bar.take() {
                b.finish();
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
