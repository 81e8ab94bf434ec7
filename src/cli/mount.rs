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
//! foreground daemon prints its "mounted" line from inside the running daemon, and
//! tells systemd it is ready (`sd_notify`, for `Type=notify` units).
//!
//! Installed as `/sbin/mount.fuse.bae` (a link to the `bae` binary: `scripts/install`)
//! it is mount(8)'s helper: `mount -t fuse.bae LIBRARY DIR -o opt,…` and fstab lines
//! become `bae --home LIBRARY mount DIR --opt …` (see [`helper_args`]).

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

/// `bae mount`'s flags. Every one has a mount option name too (see [`helper_args`]).
#[derive(Clone, Debug, clap::Args)]
pub struct MountArgs {
    pub mountpoint: PathBuf,
    /// Stay in the foreground (and tell systemd when ready: Type=notify).
    #[arg(short, long)]
    pub foreground: bool,
    /// Let other users see the files (as non-root: `user_allow_other` in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Port to listen on for peers.
    #[arg(long, value_name = "PORT")]
    pub listen: Option<u16>,
    /// Local cache limit for this run, e.g. 20GiB.
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Owner shown on every file (default: the mounting user).
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,
    /// Group shown on every file (default: the mounting user's).
    #[arg(long, value_name = "GID")]
    pub gid: Option<u32>,
    /// Bits taken away from the file and directory modes, octal (e.g. 022).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub umask: Option<u16>,
    /// Mode of files, octal (default 0444).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub file_mode: Option<u16>,
    /// Mode of directories, octal (default 0555).
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub dir_mode: Option<u16>,
    #[command(flatten)]
    pub settings: super::settings::MountSettings,
}

/// An octal mode of at most 4 digits.
fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode like 0644"))
}

impl MountArgs {
    fn permissions(&self) -> crate::fs::Permissions {
        crate::fs::Permissions {
            uid: self.uid,
            gid: self.gid,
            umask: self.umask.unwrap_or(0),
            file_mode: self.file_mode,
            dir_mode: self.dir_mode,
        }
    }

    /// The flags again, as the background daemon is given them.
    fn forwarded(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.allow_other {
            out.push("--allow-other".to_string());
        }
        let mut push = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push(flag.to_string());
                out.push(v);
            }
        };
        push("--listen", self.listen.map(|p| p.to_string()));
        push("--cache-size", self.cache_size.clone());
        push("--uid", self.uid.map(|v| v.to_string()));
        push("--gid", self.gid.map(|v| v.to_string()));
        push("--umask", self.umask.map(|v| format!("{v:o}")));
        push("--file-mode", self.file_mode.map(|v| format!("{v:o}")));
        push("--dir-mode", self.dir_mode.map(|v| format!("{v:o}")));
        out
    }
}

pub fn mount(home: &Path, args: MountArgs) -> anyhow::Result<()> {
    let mountpoint = args.mountpoint.clone();
    let cache_size_bytes = args.cache_size.as_deref().map(parse_size).transpose()?;
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
    if args.foreground {
        let opts = DaemonOptions {
            mountpoint: mountpoint.clone(),
            allow_other: args.allow_other,
            permissions: args.permissions(),
            listen_port: args.listen,
            cache_size_bytes,
        };
        return run(lib, opts, || {
            say(format_args!("mounted at {}", mountpoint.display()));
            crate::daemon::notify::ready();
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
        .arg("-f")
        .args(args.forwarded())
        // We are the one a service manager watches, not the daemon we start.
        .env_remove("NOTIFY_SOCKET");
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
            match ask_daemon(&lib, &Request::Shutdown { lazy }, Duration::from_secs(30)) {
                Ok(Some(Response::Error { message })) => {
                    bail!("{message}; close the programs using it, or run `bae umount --lazy`")
                }
                Ok(_) => {}
                // A stopping daemon can close the connection before its answer is
                // written; what counts is that the mount is gone and it exits (below).
                Err(e) if !crate::fs::is_fuse_mount(&wanted) => {
                    tracing::debug!(error = %e, "no answer to the shutdown; the mount is gone")
                }
                Err(e) => return Err(e),
            }
            // Wait for the process to finish its shutdown (uploads get a grace period).
            let deadline = Instant::now() + Duration::from_secs(60);
            while process_running(pid) {
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

/// Whether this process was started as mount(8)'s helper (`mount.fuse.bae`).
pub fn invoked_as_helper() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .is_some_and(|n| n.starts_with("mount.fuse.bae") || n == "mount.bae")
}

/// mount(8)'s helper: translates its arguments and becomes `bae mount`.
pub fn helper_main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match helper_args(&args) {
        Ok(None) => std::process::ExitCode::SUCCESS,
        Ok(Some(bae_args)) => {
            let exe = match std::env::current_exe() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("mount.fuse.bae: cannot find the bae executable: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            // exec: mount(8) waits for this very process, which returns once mounted.
            let err = Command::new(exe).arg0("bae").args(&bae_args).exec();
            eprintln!("mount.fuse.bae: cannot run bae: {err}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mount.fuse.bae: {e}");
            // mount(8)'s exit code for bad usage.
            std::process::ExitCode::from(1)
        }
    }
}

/// Mount options that say something to mount(8) or systemd, not to bae.
fn ignored_option(name: &str) -> bool {
    matches!(
        name,
        "rw" | "ro"
            | "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "dev"
            | "nodev"
            | "suid"
            | "nosuid"
            | "exec"
            | "noexec"
            | "atime"
            | "noatime"
            | "relatime"
            | "nodiratime"
            | "async"
            | "sync"
            | "_netdev"
            | "nofail"
            | "comment"
    ) || name.starts_with("x-")
}

/// The `bae` arguments for a mount helper call `LIBRARY DIR [-sfnv] [-o OPTS]
/// [-t TYPE] [-N NS]`, or `None` for a fake mount (`-f`). Every `bae mount` flag has
/// an option name: `allow_other`, `uid=`, `gid=`, `umask=`, `file_mode=`, `dir_mode=`,
/// `cache_size=`, `listen=`. Options for mount(8) or systemd are ignored; anything
/// else is an error.
pub fn helper_args(args: &[String]) -> Result<Option<Vec<String>>, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => options.push(it.next().ok_or("-o needs a value")?.clone()),
            "-t" | "-N" => {
                it.next().ok_or_else(|| format!("{a} needs a value"))?;
            }
            "-f" => fake = true,
            "-s" | "-n" | "-v" => {}
            o if o.starts_with("-o") => options.push(o[2..].to_string()),
            o if o.starts_with('-') && o.len() > 1 => return Err(format!("unknown flag {o}")),
            p => positional.push(p.to_string()),
        }
    }
    let [library, dir] = positional.as_slice() else {
        return Err("usage: mount.fuse.bae LIBRARY MOUNTPOINT [-o OPTIONS]".to_string());
    };
    let mut out = vec![
        "--home".to_string(),
        library.clone(),
        "mount".to_string(),
        dir.clone(),
    ];
    for opt in options.iter().flat_map(|o| o.split(',')) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        let flag = match name {
            "" => continue,
            "allow_other" => {
                if value.is_some() {
                    return Err("allow_other takes no value".to_string());
                }
                out.push("--allow-other".to_string());
                continue;
            }
            "uid" => "--uid",
            "gid" => "--gid",
            "umask" => "--umask",
            "file_mode" => "--file-mode",
            "dir_mode" => "--dir-mode",
            "cache_size" => "--cache-size",
            "listen" => "--listen",
            n if ignored_option(n) => continue,
            n => return Err(format!("unknown mount option {n:?}")),
        };
        let value = value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("mount option {name} needs a value ({name}=…)"))?;
        out.push(flag.to_string());
        out.push(value.to_string());
    }
    Ok((!fake).then_some(out))
}

/// Whether process `pid` still runs. An exited process that its parent has not reaped
/// yet (a zombie: the daemon is re-parented to init, which may take seconds) has
/// finished everything it had to do, closed its files and released the library's lock.
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name, which is in parentheses
        // and may itself contain spaces or parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| !matches!(state, "Z" | "X" | "x")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => {
            // SAFETY: kill with signal 0 only checks that the process exists.
            let r = unsafe { libc::kill(pid as i32, 0) };
            r == 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_exited_process_is_not_running_before_it_is_reaped() {
        assert!(process_running(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not waited for: it stays a zombie, which `kill(pid, 0)` still finds.
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_running(pid) {
            assert!(Instant::now() < deadline, "child {pid} still running");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: signal 0 only checks that the (unreaped) process exists.
        assert_eq!(
            unsafe { libc::kill(pid as i32, 0) },
            0,
            "zombie already gone"
        );
        child.wait().unwrap();
        assert!(!process_running(pid));
    }

    #[test]
    fn mount_options_become_flags_and_system_options_are_ignored() {
        let got = helper_args(&v(&[
            "/var/lib/bae",
            "/mnt/music",
            "-o",
            "rw,allow_other,cache_size=50G,uid=1000,gid=1000,_netdev,nofail,x-systemd.automount,noauto,umask=022",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            v(&[
                "--home",
                "/var/lib/bae",
                "mount",
                "/mnt/music",
                "--allow-other",
                "--cache-size",
                "50G",
                "--uid",
                "1000",
                "--gid",
                "1000",
                "--umask",
                "022"
            ])
        );
        let got = helper_args(&v(&[
            "-n",
            "L",
            "D",
            "-ofile_mode=0440,dir_mode=0550,listen=7000",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            &got[4..],
            v(&[
                "--file-mode",
                "0440",
                "--dir-mode",
                "0550",
                "--listen",
                "7000"
            ])
        );
    }

    #[test]
    fn unknown_options_and_bad_usage_are_clear_errors() {
        let e = helper_args(&v(&["L", "D", "-o", "allow_other,frobnicate"])).unwrap_err();
        assert!(e.contains("unknown mount option \"frobnicate\""), "{e}");
        let e = helper_args(&v(&["L", "D", "-o", "uid"])).unwrap_err();
        assert!(e.contains("uid needs a value"), "{e}");
        assert!(helper_args(&v(&["L"])).unwrap_err().contains("usage"));
        assert!(helper_args(&v(&["L", "D", "-x"]))
            .unwrap_err()
            .contains("-x"));
        assert_eq!(helper_args(&v(&["L", "D", "-f"])).unwrap(), None);
    }

    #[test]
    fn every_mount_flag_has_an_option_name() {
        let args = MountArgs {
            mountpoint: "D".into(),
            foreground: false,
            allow_other: true,
            listen: Some(1),
            cache_size: Some("1G".into()),
            uid: Some(2),
            gid: Some(3),
            umask: Some(0o22),
            file_mode: Some(0o440),
            dir_mode: Some(0o550),
            settings: Default::default(),
        };
        let opts =
            "allow_other,listen=1,cache_size=1G,uid=2,gid=3,umask=22,file_mode=440,dir_mode=550";
        let via_helper = helper_args(&v(&["L", "D", "-o", opts])).unwrap().unwrap();
        assert_eq!(via_helper[4..], args.forwarded()[..]);
    }
}
