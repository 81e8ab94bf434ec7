//! `bae mount` and `bae umount`.
//!
//! `bae mount` runs the daemon. Without `-f` it starts itself again in the background
//! (a new session, output to `$BAE_HOME/daemon.log`) and returns once the mount answers,
//! or fails with the daemon's own error message if it could not start.
//!
//! `bae umount` asks the daemon to unmount and stop, and waits until it has. While a
//! program holds a file open under the mount, the unmount is refused with a clear error
//! (the mount stays usable); `--lazy` detaches it at once instead and the daemon stops,
//! so programs that still hold files open get errors on their next read. A mount left
//! behind by a crashed daemon is cleaned up by `bae umount` or by the next `bae mount`
//! (which waits for a daemon that is still exiting: see `daemon::run`).
//!
//! Messages go through [`say`], which never panics on a closed or full stdout: the
//! foreground daemon prints its "mounted" line from inside the running daemon.

use std::io::{BufRead, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::daemon::config::parse_size;
use crate::daemon::control::{Request, Response};
use crate::daemon::{run, DaemonOptions};

use super::{ask_daemon, open_library};

/// How long `bae mount` waits for the background daemon to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);

pub fn mount(
    home: &Path,
    mountpoint: PathBuf,
    foreground: bool,
    allow_other: bool,
    listen: Option<u16>,
    cache_size: Option<String>,
) -> anyhow::Result<()> {
    let cache_size_bytes = cache_size.as_deref().map(parse_size).transpose()?;
    let lib = open_library(home)?;
    // Only a daemon that answers is running: one that is dying (its socket still there,
    // no answer) is waited for by the new daemon, which needs the library lock.
    if let Ok(Some(Response::Pong {
        mountpoint: mp,
        pid,
    })) = ask_daemon(&lib, &Request::Ping, Duration::from_secs(5))
    {
        bail!("this library is already mounted at {mp} (daemon pid {pid})");
    }
    match std::fs::metadata(&mountpoint) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mount point {} does not exist", mountpoint.display())
        }
        Ok(m) if !m.is_dir() => bail!("mount point {} is not a directory", mountpoint.display()),
        _ => {}
    }
    if foreground {
        let opts = DaemonOptions {
            mountpoint: mountpoint.clone(),
            allow_other,
            listen_port: listen,
            cache_size_bytes,
        };
        return run(lib, opts, || {
            say(format_args!("mounted at {}", mountpoint.display()));
        });
    }

    let log_path = lib.log_path();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let log_start = log.seek(std::io::SeekFrom::End(0))?;
    let exe = std::env::current_exe().context("finding the bae executable")?;
    // The daemon runs from / (it must not keep any directory busy), so it gets
    // absolute paths.
    let home_abs = std::fs::canonicalize(&lib.home).unwrap_or_else(|_| lib.home.clone());
    let mountpoint_abs = std::fs::canonicalize(&mountpoint).unwrap_or_else(|_| mountpoint.clone());
    let mut cmd = Command::new(exe);
    cmd.current_dir("/")
        .arg("--home")
        .arg(&home_abs)
        .arg("mount")
        .arg(&mountpoint_abs)
        .arg("-f");
    if allow_other {
        cmd.arg("--allow-other");
    }
    if let Some(p) = listen {
        cmd.arg("--listen").arg(p.to_string());
    }
    if let Some(c) = &cache_size {
        cmd.arg("--cache-size").arg(c);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent; it
    // detaches the daemon from the terminal so it survives the shell.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the daemon")?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            let tail = log_tail(&log_path, log_start);
            // A daemon that refused to start said why in its last line: that is the error.
            if let Some(reason) = tail
                .trim_end()
                .lines()
                .last()
                .and_then(|l| l.strip_prefix("bae: "))
            {
                bail!("{reason}");
            }
            bail!(
                "the daemon exited ({status}) before the mount was ready:\n{}",
                tail.trim_end()
            );
        }
        if let Ok(Some(Response::Pong { pid, .. })) =
            ask_daemon(&lib, &Request::Ping, Duration::from_secs(2))
        {
            if crate::fs::is_fuse_mount(&mountpoint) {
                say(format_args!(
                    "mounted at {} (daemon pid {pid}, log {})",
                    mountpoint.display(),
                    log_path.display()
                ));
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the daemon did not become ready within {START_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon's error lines written since `start` (its log is shared across runs).
fn log_tail(path: &Path, start: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let _ = f.seek(std::io::SeekFrom::Start(start));
    let lines: Vec<String> = std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .collect();
    let errors: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("bae:") || l.contains("ERROR"))
        .collect();
    if errors.is_empty() {
        lines
            .iter()
            .rev()
            .take(10)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        errors
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub fn umount(home: &Path, mountpoint: &Path, lazy: bool) -> anyhow::Result<()> {
    let lib = open_library(home)?;
    let wanted = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    match ask_daemon(&lib, &Request::Ping, Duration::from_secs(5))? {
        Some(Response::Pong {
            mountpoint: mp,
            pid,
        }) => {
            if Path::new(&mp) != wanted {
                bail!(
                    "this library's daemon is mounted at {mp}, not {}",
                    mountpoint.display()
                );
            }
            if let Some(Response::Error { message }) =
                ask_daemon(&lib, &Request::Shutdown { lazy }, Duration::from_secs(30))?
            {
                bail!("{message}; close the programs using it, or run `bae umount --lazy`")
            }
            // Wait for the process to finish its shutdown (uploads get a grace period).
            let deadline = Instant::now() + Duration::from_secs(60);
            // SAFETY: kill with signal 0 only checks that the process exists.
            while unsafe { libc::kill(pid as i32, 0) } == 0 {
                if Instant::now() > deadline {
                    bail!(
                        "the daemon (pid {pid}) is still stopping; see {}",
                        lib.log_path().display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            say(format_args!("unmounted {}", mountpoint.display()));
            Ok(())
        }
        _ => {
            // No daemon answers. Holding the lock proves none is alive, so a mount of
            // this library at the path is stale; a dead mount of anyone goes too.
            let _lock = crate::daemon::run::lock_library_within(&lib.home, UMOUNT_LOCK_WAIT)?;
            let fsname = crate::fs::source_name(&lib.home);
            if crate::fs::clean_stale_mount(mountpoint, &fsname)? {
                say(format_args!(
                    "removed the stale mount at {}",
                    mountpoint.display()
                ));
                Ok(())
            } else if crate::fs::is_fuse_mount(mountpoint) {
                bail!(
                    "{} is mounted by another program or library, not by this one",
                    mountpoint.display()
                )
            } else {
                bail!(
                    "nothing of this library is mounted at {}",
                    mountpoint.display()
                )
            }
        }
    }
}

/// How long `bae umount` waits for a daemon that is exiting before judging the mount.
const UMOUNT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Prints a line on stdout; a closed or full stdout loses it rather than panicking.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
