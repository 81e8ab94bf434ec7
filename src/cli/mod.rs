//! The command line: one file per command, all behind one `clap` parser. Commands
//! change the catalog themselves (so they work with no daemon running and are durable
//! when they return) and then nudge a running daemon over the control socket.
//! Nothing here panics on a closed or full stderr: logs go through [`log`], and the
//! final error line is written with its failure ignored.

mod add;
mod import;
mod log;
mod manage;
pub mod mount;
mod progress;
mod settings;
mod status;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::daemon::control::{self, ControlError, Request, Response};
use crate::daemon::{default_home, InitOptions, Library};
use crate::model::TorrentId;

#[derive(Debug, Parser)]
#[command(
    name = "bae",
    version,
    about = "Torrents as encrypted chunks in S3, mounted read-only and seeded from the same chunks",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// The library directory (default: $BAE_HOME, else ~/.local/share/bae).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Draw no progress bars (they are drawn on stderr, only when it is a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  bae init --remote s3://music/bae --endpoint http://127.0.0.1:9000 --cache-size 50GiB
  bae mount ~/Music/bae                 # returns once mounted; the daemon keeps running
  bae add album.torrent --wait          # download with a progress bar
  bae add 'magnet:?xt=urn:btih:...'
  bae add --no-pin ~/torrents/*.torrent  # a whole library at once, evictable once uploaded
  bae import ~/rips/Album --out Album.torrent
  bae status --watch
  bae seed Album on --no-pin            # seed from the remote, without pinning the cache
  bae umount ~/Music/bae

Environment:
  BAE_HOME     the library (default ~/.local/share/bae)
  BAE_LOG      log filter (e.g. debug)
  BAE_<KEY>    any config.toml key, e.g. BAE_CACHE_SIZE, BAE_NETWORK_LISTEN_PORT
               (bae config --keys lists them all)

Shell completions: bae completions bash|zsh|fish; manual page: bae man";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a library (key, config, database).
    Init {
        /// Store encrypted chunks in S3: s3://BUCKET[/PREFIX]. Default: a local directory.
        #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
        remote: Option<String>,
        /// S3 endpoint URL for S3-compatible services (path-style addressing).
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
        /// Local cache limit, e.g. 20GiB.
        #[arg(long, value_name = "SIZE")]
        cache_size: Option<String>,
        /// Use this key (64 hex characters) instead of generating one.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Rebuild the library from the snapshot in the remote (needs --key).
        #[arg(long)]
        restore: bool,
    },
    /// Add torrents from .torrent files or magnet links (all or nothing).
    Add {
        #[arg(value_name = "FILE.torrent|MAGNET", required = true)]
        sources: Vec<String>,
        /// Add it paused.
        #[arg(long)]
        paused: bool,
        /// Wait for the download to finish, with a progress bar.
        #[arg(long, conflicts_with = "paused")]
        wait: bool,
        /// Seed without pinning the chunks in the cache: once uploaded they may be
        /// evicted and are fetched back when a peer or a reader asks (a library larger
        /// than the disk). Same as `bae seed TORRENT on --no-pin` later.
        #[arg(long)]
        no_pin: bool,
        /// Connect to this peer directly (repeatable), e.g. 192.0.2.7:51413.
        #[arg(long, value_name = "IP:PORT")]
        peer: Vec<String>,
    },
    /// Make a torrent of a local album folder, store its content and seed it.
    Import {
        /// The album folder (with --torrent: the folder holding the torrent's files).
        dir: PathBuf,
        /// Import the content of this existing torrent from DIR instead of making a new
        /// one (re-seed an album you already have). Every piece is checked.
        #[arg(long, value_name = "FILE.torrent", conflicts_with_all = ["piece_size", "tracker", "out"])]
        torrent: Option<PathBuf>,
        /// Piece size (a power of two, e.g. 256KiB); default: chosen by size.
        #[arg(long, value_name = "SIZE")]
        piece_size: Option<String>,
        #[arg(long, value_name = "URL")]
        tracker: Vec<String>,
        /// Where to write the .torrent file.
        #[arg(long, value_name = "FILE.torrent")]
        out: Option<PathBuf>,
    },
    /// Mount the library and run the daemon (in the background unless -f).
    Mount(mount::MountArgs),
    /// Unmount and stop the daemon.
    Umount {
        mountpoint: PathBuf,
        /// Detach even while files are open (they stay readable until closed).
        #[arg(long)]
        lazy: bool,
    },
    /// Show torrents, transfer rates, chunks and cache use.
    Status {
        #[arg(long)]
        json: bool,
        /// Refresh every second.
        #[arg(long)]
        watch: bool,
    },
    /// Turn seeding on or off.
    Seed {
        torrent: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Seed without keeping the chunks pinned in the cache (fetched back from the
        /// remote when peers ask).
        #[arg(long)]
        no_pin: bool,
    },
    /// Stop downloading and seeding a torrent (its files stay readable from the cache).
    Pause {
        /// Name, or a unique prefix of its name or info hash.
        torrent: String,
    },
    /// Start a paused torrent again.
    Resume {
        /// Name, or a unique prefix of its name or info hash.
        torrent: String,
    },
    /// Remove a torrent from the library (--purge: also its objects in the remote).
    Remove {
        torrent: String,
        #[arg(long)]
        purge: bool,
    },
    /// Check every stored chunk of a torrent, locally and in the remote.
    Verify {
        torrent: String,
        /// Replace what is damaged: fetch again, upload again, or download again.
        #[arg(long)]
        repair: bool,
    },
    /// Drop cached chunks that are safe in the remote (not pinned by seeding).
    Evict,
    /// Print the settings in effect: config.toml with the BAE_… overrides applied.
    Config {
        /// Print the table of keys, environment variables and flags instead.
        #[arg(long)]
        keys: bool,
    },
    /// Print a shell completion script, e.g. `source <(bae completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `bae man | man -l -`.
    Man,
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let verbose = matches!(cli.command, Command::Mount { .. });
    init_tracing(verbose);
    let result = run(cli);
    // Queued log lines first, so the error line comes last.
    log::flush(LOG_FLUSH_TIMEOUT);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "bae: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How long a finishing command waits for its queued log lines to be written.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

fn init_tracing(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BAE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(log::sink())
        .log_internal_errors(false)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let home = cli.home.clone().unwrap_or_else(default_home);
    if cli.no_progress {
        progress::disable();
    }
    match cli.command {
        Command::Init {
            remote,
            endpoint,
            region,
            cache_size,
            key,
            restore,
        } => {
            let opts = InitOptions {
                remote,
                endpoint,
                region,
                cache_size,
                key_file: key,
                restore,
            };
            // Only a restore is long (it reads every torrent's metadata from the remote).
            let bar = std::sync::Mutex::new(restore.then(|| {
                progress::Progress::new("restoring the catalog", progress::Unit::Items("torrents"))
            }));
            let on_progress = |done: u64, total: u64| {
                if let Some(p) = bar.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    p.set(done, total);
                }
            };
            let lib = runtime()?.block_on(Library::init_with_progress(&home, &opts, &on_progress));
            let bar = bar.into_inner().unwrap_or_else(|e| e.into_inner());
            let lib = lib?;
            if let Some(bar) = bar {
                bar.finish();
            }
            println!("initialised library in {}", lib.home.display());
            if restore {
                println!(
                    "restored {} torrents from the remote",
                    lib.catalog.torrents()?.len()
                );
            }
            Ok(())
        }
        Command::Add {
            sources,
            paused,
            wait,
            no_pin,
            peer,
        } => add::run(
            &home,
            &sources,
            add::Options {
                paused,
                no_pin,
                wait,
            },
            &peer,
        ),
        Command::Import {
            dir,
            torrent,
            piece_size,
            tracker,
            out,
        } => import::run(
            &home,
            &import::ImportArgs {
                dir: &dir,
                torrent: torrent.as_deref(),
                piece_size: piece_size.as_deref(),
                trackers: &tracker,
                out: out.as_deref(),
            },
        ),
        Command::Mount(args) => {
            args.settings.export();
            mount::mount(&home, args)
        }
        Command::Umount { mountpoint, lazy } => mount::umount(&home, &mountpoint, lazy),
        Command::Status { json, watch } => status::run(&home, json, watch),
        Command::Seed {
            torrent,
            state,
            no_pin,
        } => manage::seed(&home, &torrent, state == "on", !no_pin),
        Command::Pause { torrent } => manage::pause(&home, &torrent, true),
        Command::Resume { torrent } => manage::pause(&home, &torrent, false),
        Command::Remove { torrent, purge } => manage::remove(&home, &torrent, purge),
        Command::Verify { torrent, repair } => manage::verify(&home, &torrent, repair),
        Command::Evict => manage::evict(&home),
        Command::Config { keys } => settings::show(&home, keys),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "bae", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out)?;
            // Each subcommand's page follows the main one (`bae man | man -l -` shows all).
            for sub in <Cli as clap::CommandFactory>::command().get_subcommands() {
                clap_mangen::Man::new(sub.clone())
                    .title(format!("bae-{}", sub.get_name()))
                    .render(&mut out)?;
            }
            use std::io::Write;
            std::io::stdout().write_all(&out)?;
            Ok(())
        }
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub(crate) fn open_library(home: &std::path::Path) -> anyhow::Result<Library> {
    Ok(runtime()?.block_on(Library::open_or_create(home))?)
}

/// The store of a library with no daemon running, opened by this command. Holds the
/// library lock, so a daemon cannot start and write to the same cache meanwhile.
pub(crate) struct OfflineStore {
    pub store: std::sync::Arc<crate::store::Store>,
    pub rt: tokio::runtime::Runtime,
    _lock: crate::daemon::run::LibraryLock,
}

impl OfflineStore {
    pub fn open(lib: &Library) -> anyhow::Result<OfflineStore> {
        let lock = crate::daemon::run::lock_library(&lib.home)?;
        let rt = runtime()?;
        // No limit while we work: eviction is what `evict` asks for explicitly.
        let store = crate::store::Store::open(
            &lib.cache_dir(),
            lib.catalog.clone(),
            u64::MAX,
            rt.handle().clone(),
        )?;
        Ok(OfflineStore {
            store,
            rt,
            _lock: lock,
        })
    }

    /// Makes everything durable before the lock is released.
    pub fn close(self) -> anyhow::Result<()> {
        self.store.shutdown()?;
        Ok(())
    }
}

/// Sends a request to the running daemon, if there is one.
pub(crate) fn ask_daemon(
    lib: &Library,
    req: &Request,
    timeout: Duration,
) -> anyhow::Result<Option<Response>> {
    match runtime()?.block_on(control::call(&lib.socket_path(), req, timeout)) {
        Ok(r) => Ok(Some(r)),
        Err(ControlError::NotRunning) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// [`ask_daemon`], passing the daemon's progress lines (`done`, `total`) to `on_progress`.
pub(crate) fn ask_daemon_with_progress(
    lib: &Library,
    req: &Request,
    timeout: Duration,
    on_progress: &mut (dyn FnMut(u64, u64) + Send),
) -> anyhow::Result<Option<Response>> {
    let socket = lib.socket_path();
    let call = control::call_with_progress(&socket, req, timeout, on_progress);
    match runtime()?.block_on(call) {
        Ok(r) => Ok(Some(r)),
        Err(ControlError::NotRunning) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Tells a running daemon that these torrents changed in the catalog (added, removed,
/// re-flagged). Silent when none runs.
pub(crate) fn nudge_daemon(lib: &Library, changed: &[TorrentId]) -> anyhow::Result<()> {
    let req = Request::Sync {
        torrents: changed.iter().map(|t| t.0).collect(),
    };
    match ask_daemon(lib, &req, Duration::from_secs(30))? {
        Some(Response::Error { message }) => anyhow::bail!("the daemon refused: {message}"),
        _ => Ok(()),
    }
}
