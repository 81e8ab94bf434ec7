//! `bae add FILE.torrent | MAGNET`: record the torrent (durably) and hand it to the
//! daemon. With a .torrent the layout is recorded at once, so the mount shows the files
//! with exact sizes before any data arrives.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::catalog::{Layout, NewTorrent};
use crate::daemon::control::{Request, Response};
use crate::daemon::storage::layout_of;
use crate::model::TorrentId;
use crate::torrent::{parse_magnet, parse_metainfo};

use super::progress::{Progress, Unit};
use super::{ask_daemon_with_progress, nudge_daemon, open_library};

/// How `bae add` records the torrents.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub paused: bool,
    pub no_pin: bool,
    /// Wait until every torrent is downloaded.
    pub wait: bool,
}

/// Adds every source (.torrent files and magnet links), all or nothing: every source is
/// parsed and checked before the library changes, and a failure part-way takes back what
/// this call added.
pub fn run(home: &Path, sources: &[String], opts: Options, peers: &[String]) -> anyhow::Result<()> {
    for p in peers {
        p.parse::<std::net::SocketAddr>()
            .with_context(|| format!("--peer {p:?} is not IP:PORT"))?;
    }
    let parsed: Vec<(NewTorrent, Option<Layout>)> = sources
        .iter()
        .map(|s| parse_source(s, opts, peers))
        .collect::<anyhow::Result<_>>()?;
    let mut seen = HashMap::new();
    for ((t, _), source) in parsed.iter().zip(sources) {
        if let Some(first) = seen.insert(hex_of(t), source) {
            bail!("{first} and {source} are the same torrent; nothing was added");
        }
    }
    let lib = open_library(home)?;
    let mut bar = (parsed.len() > 1).then(|| {
        Progress::new(
            format!("adding {} torrents", parsed.len()),
            Unit::Items("torrents"),
        )
    });
    let mut added: Vec<(TorrentId, &NewTorrent)> = Vec::with_capacity(parsed.len());
    for (new, layout) in &parsed {
        let id = match add_one(&lib, new, layout.as_ref()) {
            Ok(id) => id,
            Err(e) => {
                for (id, _) in &added {
                    let _ = lib.catalog.remove_torrent(*id);
                }
                if let Some(b) = bar.take() {
                    b.clear();
                }
                let e = e.context(format!("adding {}", new.name));
                return Err(if added.is_empty() {
                    e
                } else {
                    e.context(format!(
                        "the {} torrents added before it were taken back",
                        added.len()
                    ))
                });
            }
        };
        added.push((id, new));
        if let Some(b) = bar.as_mut() {
            b.set(added.len() as u64, parsed.len() as u64);
        }
    }
    if let Some(b) = bar.take() {
        b.finish();
    }
    let ids: Vec<_> = added.iter().map(|(id, _)| *id).collect();
    nudge_daemon(&lib, &ids)?;
    for (_, new) in &added {
        println!("added {} ({})", new.name, hex_of(new));
    }
    if opts.wait {
        for (id, new) in &added {
            wait_for(&lib, id.0, &new.name)?;
        }
    }
    Ok(())
}

/// Reads and checks one source; touches nothing.
fn parse_source(
    source: &str,
    opts: Options,
    peers: &[String],
) -> anyhow::Result<(NewTorrent, Option<Layout>)> {
    if source.starts_with("magnet:") {
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
        return Ok((
            NewTorrent {
                info_hash_v1: m.info_hash_v1,
                info_hash_v2: m.info_hash_v2,
                name,
                magnet: Some(source.to_owned()),
                metainfo: None,
                paused: opts.paused,
                no_pin: opts.no_pin,
                peers: peers.to_vec(),
                ..Default::default()
            },
            None,
        ));
    }
    let bytes = std::fs::read(source).with_context(|| format!("cannot read {source}"))?;
    let meta =
        parse_metainfo(&bytes).with_context(|| format!("{source} is not a valid torrent"))?;
    let layout = layout_of(&meta.layout);
    layout
        .validate()
        .with_context(|| format!("{source} has an unsupported layout"))?;
    Ok((
        NewTorrent {
            info_hash_v1: meta.info_hash_v1(),
            info_hash_v2: meta.info_hash_v2(),
            name: meta.name.clone(),
            magnet: None,
            metainfo: Some(meta.torrent_bytes.clone()),
            paused: opts.paused,
            no_pin: opts.no_pin,
            peers: peers.to_vec(),
            ..Default::default()
        },
        Some(layout),
    ))
}

/// Records one torrent (and its layout) durably; nothing is left of it on failure.
fn add_one(
    lib: &crate::daemon::Library,
    new: &NewTorrent,
    layout: Option<&Layout>,
) -> anyhow::Result<TorrentId> {
    let id = lib.catalog.add_torrent(new)?;
    if let Some(layout) = layout {
        if let Err(e) = lib.catalog.set_layout(id, layout, None, None) {
            let _ = lib.catalog.remove_torrent(id);
            return Err(e.into());
        }
    }
    Ok(id)
}

fn hex_of(t: &NewTorrent) -> String {
    t.info_hash_v1
        .map(hex::encode)
        .or(t.info_hash_v2.map(hex::encode))
        .unwrap_or_default()
}

/// How often `add --wait` looks whether its torrent was paused meanwhile.
const PAUSED_LOOK_EVERY: Duration = Duration::from_millis(500);

/// Shows a progress bar until the torrent is fully verified (the daemon answers then).
pub fn wait_for(lib: &crate::daemon::Library, id: i64, name: &str) -> anyhow::Result<()> {
    let mut bar = Progress::new(format!("downloading {name}"), Unit::Bytes);
    // The daemon counts verified bytes; whether the torrent was paused (another shell's
    // `bae pause`) is in the catalog, looked at now and then while the bar is drawn.
    let mut looked: Option<std::time::Instant> = None;
    let mut on_progress = |done: u64, total: u64| {
        bar.set(done, total);
        if looked.is_none_or(|at| at.elapsed() >= PAUSED_LOOK_EVERY) {
            looked = Some(std::time::Instant::now());
            let paused = lib
                .catalog
                .torrent(crate::model::TorrentId(id))
                .is_ok_and(|t| t.paused);
            bar.set_note(paused.then_some("paused: `bae resume` goes on"));
        }
    };
    // Downloads take as long as they take: no deadline but the daemon's answer.
    let timeout = Duration::from_secs(365 * 24 * 3600);
    let req = Request::Wait { torrent: id };
    match ask_daemon_with_progress(lib, &req, timeout, &mut on_progress)? {
        Some(Response::Done { .. }) => {
            bar.finish();
            Ok(())
        }
        Some(Response::Error { message }) => {
            bar.clear();
            bail!("{message}")
        }
        Some(_) => bail!("unexpected answer from the daemon"),
        None => bail!("--wait needs a running daemon (start one with `bae mount MOUNTPOINT`)"),
    }
}
