//! The watch folder (`watch_dir`): `.torrent` and `.magnet` files dropped there are
//! added, then moved to `watch_dir/added/`, or to `watch_dir/failed/` with a
//! `NAME.error` file beside them saying why.
//!
//! Invariants:
//! - A file is taken only once its size and mtime are the same on two looks in a row
//!   (`watch_interval_secs` apart), so a file still being written or copied is left alone.
//! - Adding goes through `bae add` itself (this executable, same library): the same
//!   checks, the same durable catalog write and the same nudge of this daemon as a user's
//!   command, and one error line to keep when it fails.
//! - Hidden files and other extensions are ignored; the `added/` and `failed/`
//!   subfolders are never looked into.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::library::Library;

/// Starts watching if the library's config names a watch folder.
pub fn spawn(rt: &tokio::runtime::Handle, lib: &Library) {
    let Some(dir) = lib.config.watch_dir.clone() else {
        return;
    };
    let dir = if dir.is_relative() {
        lib.home.join(dir)
    } else {
        dir
    };
    let home = lib.home.clone();
    let interval = Duration::from_secs(lib.config.watch_interval_secs.max(1));
    tracing::info!(dir = %dir.display(), "watching for .torrent and .magnet files");
    rt.spawn(async move {
        let mut seen: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let (d, h) = (dir.clone(), home.clone());
            let prev = std::mem::take(&mut seen);
            match tokio::task::spawn_blocking(move || look(&d, &h, prev)).await {
                Ok(next) => seen = next,
                Err(e) => tracing::error!(error = %e, "watch folder task failed"),
            }
        }
    });
}

/// One look at `dir`: takes the files that are stable since the last look; returns what
/// is still waiting, with its size and mtime, for the next look.
fn look(
    dir: &Path,
    home: &Path,
    prev: HashMap<PathBuf, (u64, SystemTime)>,
) -> HashMap<PathBuf, (u64, SystemTime)> {
    let mut next = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the watch folder");
            return next;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = name.ends_with(".torrent") || name.ends_with(".magnet");
        if name.starts_with('.') || !wanted {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let now = (
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        );
        if prev.get(&path) != Some(&now) {
            next.insert(path, now);
            continue;
        }
        match add(home, &path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "added from the watch folder");
                move_to(dir, "added", &path, None);
            }
            Err(message) => {
                tracing::warn!(file = %path.display(), %message, "cannot add from the watch folder");
                move_to(dir, "failed", &path, Some(&message));
            }
        }
    }
    next
}

/// Adds `file` with `bae add`; Err: its error message.
fn add(home: &Path, file: &Path) -> Result<(), String> {
    let source = if file.extension().is_some_and(|e| e == "magnet") {
        let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or("the .magnet file is empty")?
            .to_string()
    } else {
        file.display().to_string()
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find bae: {e}"))?;
    let out = std::process::Command::new(exe)
        .arg("--home")
        .arg(home)
        .arg("add")
        .arg(&source)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run bae add: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bae add failed");
    Err(line.strip_prefix("bae: ").unwrap_or(line).to_string())
}

/// Moves `file` into `dir/sub/` (a free name), writing `NAME.error` beside it if given.
fn move_to(dir: &Path, sub: &str, file: &Path, error: Option<&str>) {
    let target_dir = dir.join(sub);
    if let Err(e) = std::fs::create_dir_all(&target_dir) {
        tracing::error!(dir = %target_dir.display(), error = %e, "cannot create");
        return;
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = target_dir.join(&name);
    let mut n = 2;
    while target.exists() {
        target = target_dir.join(format!("{name}.{n}"));
        n += 1;
    }
    if let Err(e) = std::fs::rename(file, &target) {
        tracing::error!(file = %file.display(), error = %e, "cannot move out of the watch folder");
        return;
    }
    if let Some(message) = error {
        let mut err_path = target.into_os_string();
        err_path.push(".error");
        if let Err(e) = std::fs::write(&err_path, format!("{message}\n")) {
            tracing::error!(error = %e, "cannot write the .error file");
        }
    }
}
