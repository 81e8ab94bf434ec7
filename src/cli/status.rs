//! `bae status`: a table of torrents (or JSON), from the daemon when one runs, else
//! from the catalog. `--watch` redraws in place on a terminal (cursor home, clear to
//! the end) and prints plain repeated blocks, separated by a blank line, otherwise.
//! The JSON shape only grows: fields are added, never renamed.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::daemon::control::{Request, Response, StatusReport};
use crate::daemon::report;

use super::{ask_daemon, open_library};

pub fn run(home: &Path, json: bool, watch: bool) -> anyhow::Result<()> {
    let lib = open_library(home)?;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut first = true;
    loop {
        let report = match ask_daemon(&lib, &Request::Status, Duration::from_secs(10))? {
            Some(Response::Status(r)) => *r,
            Some(other) => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
            None => {
                let mut r = report::offline(&lib.catalog, &lib.cache_dir())?;
                r.cache_limit_bytes = lib.config.cache_size_bytes();
                r
            }
        };
        let text = if json {
            serde_json::to_string_pretty(&report)? + "\n"
        } else {
            render(&report)
        };
        let mut out = std::io::stdout().lock();
        if watch && terminal {
            // Home the cursor, draw, clear what the last draw left below.
            write!(out, "{}", if first { "\x1b[2J\x1b[H" } else { "\x1b[H" })?;
            out.write_all(text.replace('\n', "\x1b[K\n").as_bytes())?;
            write!(out, "\x1b[J")?;
            out.flush()?;
            first = false;
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        if watch && !first {
            writeln!(out)?;
        }
        first = false;
        out.write_all(text.as_bytes())?;
        out.flush()?;
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Time left at the current rate, `-` when unknown or done.
fn eta(t: &crate::daemon::control::TorrentReport) -> String {
    let left = (t.size_bytes as f64 * (1.0 - t.progress)).max(0.0) as u64;
    if t.progress >= 1.0 || t.download_bps == 0 || left == 0 {
        return "-".into();
    }
    let secs = left / t.download_bps.max(1);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

fn rate(bps: u64) -> String {
    if bps == 0 {
        "-".into()
    } else {
        format!("{}/s", human(bps))
    }
}

pub fn render(r: &StatusReport) -> String {
    let mut s = String::new();
    match (&r.mountpoint, r.daemon_running) {
        (Some(mp), true) => {
            s += &format!(
                "daemon: running, mounted at {mp}, listening on port {}\n",
                r.listen_port.unwrap_or(0)
            )
        }
        _ => s += "daemon: not running\n",
    }
    let name_w = r
        .torrents
        .iter()
        .map(|t| t.name.chars().count().min(40))
        .max()
        .unwrap_or(4)
        .max(4);
    s += &format!(
        "{:<name_w$}  {:>10}  {:>6}  {:>7}  {:>11}  {:>11}  {:>5}  {:<11}  {:>17}\n",
        "NAME", "SIZE", "DONE", "ETA", "DOWN", "UP", "PEERS", "STATE", "CHUNKS L/U/T"
    );
    for t in &r.torrents {
        let name: String = t.name.chars().take(40).collect();
        let mut state = t.state.clone();
        if t.seeding && !t.pinned {
            state += "*";
        }
        s += &format!(
            "{:<name_w$}  {:>10}  {:>5.1}%  {:>7}  {:>11}  {:>11}  {:>5}  {:<11}  {:>17}\n",
            name,
            human(t.size_bytes),
            t.progress * 100.0,
            eta(t),
            rate(t.download_bps),
            rate(t.upload_bps),
            t.peers,
            state,
            format!(
                "{}/{}/{}",
                t.chunks_local, t.chunks_uploaded, t.chunks_total
            ),
        );
        if let Some(e) = &t.error {
            s += &format!("  error: {e}\n");
        }
    }
    if r.torrents.is_empty() {
        s += "(no torrents: bae add FILE.torrent | MAGNET, or bae import DIR)\n";
    }
    let (down, up): (u64, u64) = r
        .torrents
        .iter()
        .fold((0, 0), |(d, u), t| (d + t.download_bps, u + t.upload_bps));
    if r.daemon_running {
        s += &format!(
            "total: {} down, {} up, {} peers\n",
            rate(down),
            rate(up),
            r.torrents.iter().map(|t| u64::from(t.peers)).sum::<u64>()
        );
    }
    s += &format!(
        "cache: {} of {} used ({} pinned, {} evictable), {} not yet uploaded",
        human(r.cache.used_bytes),
        human(r.cache_limit_bytes),
        human(r.cache.used_bytes.saturating_sub(r.cache.evictable_bytes)),
        human(r.cache.evictable_bytes),
        human(r.cache.not_uploaded_bytes)
    );
    if let Some(u) = &r.uploader {
        s += &format!(
            "; uploads: {} in flight, {} queued, {} done",
            u.in_flight, u.queued, u.uploaded_chunks
        );
    }
    s += "\n";
    for w in &r.warnings {
        s += &format!("warning: {w}\n");
    }
    s
}
