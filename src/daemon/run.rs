//! The daemon process: wires the store, uploader, libtorrent session and FUSE mount of
//! one library together, serves the control socket, and shuts down cleanly on `bae
//! umount`, SIGINT or SIGTERM: unmount, stop the session, make verified pieces durable,
//! give uploads a bounded chance to finish (the rest resume at the next start), write
//! the remote metadata that is still stale.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::mpsc;

use crate::catalog::{CatalogError, TorrentRecord};
use crate::fs::{FsError, MountHandle, MountOptions};
use crate::model::TorrentId;
use crate::store::Store;
use crate::tiering::{journal::JournalError, CachePressure, Fetcher, Journal, Uploader};
use crate::torrent::{AddOptions, Event, QueueLimits, Session, SessionConfig, Source};

use super::chunk_order::ChunkOrder;
use super::content::StoreContent;
use super::control::{self, Request, Response, StatusReport};
use super::library::Library;
use super::storage::StoreStorage;

/// What `bae mount` was asked for.
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    pub mountpoint: PathBuf,
    pub allow_other: bool,
    pub permissions: crate::fs::Permissions,
    pub listen_port: Option<u16>,
    pub cache_size_bytes: Option<u64>,
}

/// How long shutdown waits for uploads in flight before leaving them for next time.
const SHUTDOWN_UPLOAD_GRACE: Duration = Duration::from_secs(10);

struct Daemon {
    lib: Library,
    store: Arc<Store>,
    session: Arc<Session>,
    content: Arc<StoreContent>,
    uploader: Uploader,
    fetcher: Arc<Fetcher>,
    pressure: Arc<CachePressure>,
    mountpoint: PathBuf,
    /// Torrents the session currently has.
    /// Torrents in the session, with whether they were last set active (not paused):
    /// pause and resume are applied on change only, so libtorrent's queue decides
    /// which auto-managed torrents run.
    added: Mutex<HashMap<TorrentId, bool>>,
    shutdown_tx: mpsc::UnboundedSender<StopRequest>,
    journal: Arc<Journal>,
    chunk_order: Arc<ChunkOrder>,
}

/// How long `bae add` (a Sync request) waits for the new torrent's metadata to reach the
/// remote before answering anyway (the writer keeps trying).
const SYNC_META_WAIT: Duration = Duration::from_secs(5);

/// How long a starting daemon waits for the library lock: a daemon that is still
/// stopping (or whose process is being torn down after `kill -9`) holds it until then.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// How often a `Wait` looks without news (errors, removal) and shows its client it lives.
const WAIT_HEARTBEAT: Duration = Duration::from_secs(1);

/// An exclusive lock on the library: one daemon per library. A daemon holds it from
/// before it mounts until its process ends, so whoever holds it knows that no server
/// of this library's mount is alive.
pub struct LibraryLock(#[allow(dead_code)] std::fs::File);

pub fn lock_library(home: &Path) -> anyhow::Result<LibraryLock> {
    lock_library_within(home, Duration::ZERO)
}

/// [`lock_library`], waiting up to `wait` for a daemon that is stopping.
pub fn lock_library_within(home: &Path, wait: Duration) -> anyhow::Result<LibraryLock> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match try_lock_library(home)? {
            Some(lock) => return Ok(lock),
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            None => bail!(
                "a bae daemon is already running for the library in {} (bae umount stops it)",
                home.display()
            ),
        }
    }
}

fn try_lock_library(home: &Path) -> anyhow::Result<Option<LibraryLock>> {
    let path = home.join("daemon.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(e).with_context(|| format!("locking {}", path.display()));
    }
    Ok(Some(LibraryLock(f)))
}

/// Waits for the next delivery of a signal; forever when its handler could not be set up.
async fn next_signal(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig.as_mut() {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// A request to stop: lazily (detach a busy mount) or not, and where to say how it went.
type StopRequest = (bool, tokio::sync::oneshot::Sender<Result<(), String>>);

/// Runs the daemon in the foreground until it is told to stop. `ready` is called once
/// the mount answers and the control socket listens.
pub fn run(lib: Library, opts: DaemonOptions, ready: impl FnOnce()) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("bae-rt")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let _lock = lock_library_within(&lib.home, LOCK_WAIT)?;

    // A mount left behind by a crashed daemon of this library is cleaned up first: we
    // hold the lock, so its server is gone whatever state the kernel shows.
    let fsname = crate::fs::source_name(&lib.home);
    crate::fs::clean_stale_mount(&opts.mountpoint, &fsname)?;

    let (shutdown_tx, shutdown_rx) = mpsc::unbounded_channel();
    let daemon = Daemon::start(&rt, lib, &opts, shutdown_tx)?;
    let mount = daemon.mount(&rt, &opts, fsname)?;
    let tasks = daemon.serve(&rt)?;
    let pid_file = daemon.lib.home.join("daemon.pid");
    if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        tracing::warn!(error = %e, "cannot write {}", pid_file.display());
    }
    // The handlers go in before anyone is told we are ready: a service manager (or a
    // test) may send SIGTERM the moment it hears READY=1.
    let signals = {
        let _guard = rt.enter();
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    tracing::info!(mountpoint = %daemon.mountpoint.display(), port = daemon.session.listen_port(), "bae is running");
    ready();

    let mount = rt.block_on(wait_for_stop(
        mount,
        shutdown_rx,
        signals,
        &daemon.mountpoint,
    ));
    let reads = mount.read_gate();
    drop(mount);
    let _ = std::fs::remove_file(daemon.lib.socket_path());
    let _ = std::fs::remove_file(&pid_file);
    rt.block_on(async {
        daemon.clone().shutdown().await;
        // The tasks holding the daemon end first, so that dropping it below drops the
        // session while the runtime still runs: disk workers may be inside a store call
        // that needs it (libtorrent says goodbye to trackers and joins its workers).
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    });
    if Arc::strong_count(&daemon) > 1 {
        tracing::warn!("daemon still referenced at shutdown");
    }
    let store = daemon.store.clone();
    drop(daemon);
    // Pieces verified while the session wound down are recorded too.
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "recording the last verified pieces");
    }
    // Files still open on a lazily detached mount get EIO from here on.
    reads.close();
    rt.shutdown_timeout(Duration::from_secs(5));
    tracing::info!("stopped");
    Ok(())
}

/// The library's remote and its metadata journal, checked: the remote must belong to
/// this library and key before anything is written to it, so a wrong key stops here
/// with one clear error instead of EIO on every read later. A remote that cannot be
/// reached now is not an error (metadata is written once it can be).
fn open_remote(
    rt: &tokio::runtime::Runtime,
    lib: &Library,
) -> anyhow::Result<(crate::remote::Remote, Arc<Journal>)> {
    let remote = rt.block_on(lib.remote())?;
    let journal = Journal::new(remote.clone(), lib.key.clone(), lib.catalog.clone())?;
    match rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), journal.check_remote()).await
    }) {
        Ok(Ok(())) => {}
        Ok(Err(e @ (JournalError::WrongKey | JournalError::OtherLibrary(_)))) => {
            bail!("{e}")
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "the remote cannot be checked now; metadata is written once it can")
        }
        Err(_) => tracing::warn!("the remote did not answer; metadata is written once it does"),
    }
    Ok((remote, journal))
}

/// Waits for a stop request, a signal, or the mount being taken away from us; returns
/// the mount, unmounted (or detached) when a signal asked for the stop.
async fn wait_for_stop(
    mut mount: MountHandle,
    mut requests: mpsc::UnboundedReceiver<StopRequest>,
    (mut term, mut int): (
        Option<tokio::signal::unix::Signal>,
        Option<tokio::signal::unix::Signal>,
    ),
    mountpoint: &Path,
) -> MountHandle {
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    let signalled = loop {
        tokio::select! {
            Some((lazy, reply)) = requests.recv() => {
                let r = if lazy { mount.unmount_lazy() } else { mount.unmount() };
                if let Err(FsError::Busy(_)) = &r {
                    tracing::warn!("unmount refused: the mount is busy");
                }
                let done = r.is_ok();
                let _ = reply.send(r.map_err(|e| e.to_string()));
                if done {
                    break false;
                }
            }
            _ = next_signal(&mut int) => break true,
            _ = next_signal(&mut term) => break true,
            _ = watch.tick() => {
                if !crate::fs::is_fuse_mount(mountpoint) {
                    tracing::warn!("the mount was removed from outside; stopping");
                    break false;
                }
            }
        }
    };
    if signalled {
        if let Err(e) = mount.unmount() {
            tracing::warn!(error = %e, "unmount failed; detaching lazily");
            let _ = mount.unmount_lazy();
        }
    }
    mount
}

impl Daemon {
    /// Opens the store and starts everything behind the mount: uploader, metadata
    /// writer, libtorrent session (with the torrents of the catalog), metrics, the
    /// watch folder and the thread that feeds libtorrent's events to the store.
    fn start(
        rt: &tokio::runtime::Runtime,
        lib: Library,
        opts: &DaemonOptions,
        shutdown_tx: mpsc::UnboundedSender<StopRequest>,
    ) -> anyhow::Result<Arc<Daemon>> {
        let (remote, journal) = open_remote(rt, &lib)?;
        let limit = opts
            .cache_size_bytes
            .unwrap_or_else(|| lib.config.cache_size_bytes());
        let store = Store::open(
            &lib.cache_dir(),
            lib.catalog.clone(),
            limit,
            rt.handle().clone(),
        )?;
        // Before libtorrent hears of any verified piece: those no chunk hash vouches for
        // are checked against the torrent's own hashes.
        let revoked = super::verify::recheck_unfinished_chunks(&lib.catalog, &store);
        if revoked > 0 {
            tracing::warn!(pieces = revoked, "pieces of unfinished chunks changed on disk while bae was stopped; downloading them again");
        }
        store.set_read_ahead_chunks(lib.config.readahead_chunks);
        let fetcher = Arc::new(Fetcher::new(remote.clone(), lib.key.clone()));
        store.set_source(fetcher.clone());
        let uploader = {
            let _enter = rt.enter();
            journal.start();
            Uploader::start(
                store.clone(),
                remote.clone(),
                lib.key.clone(),
                journal.clone(),
                lib.config.upload_concurrency,
            )
        };
        let chunk_order = Arc::new(ChunkOrder::default());
        let content = Arc::new(StoreContent::new(
            store.clone(),
            lib.catalog.clone(),
            Duration::from_secs(lib.config.read_timeout_secs),
            chunk_order.clone(),
        ));
        let pressure = Arc::new(CachePressure::new(
            store.clone(),
            &lib.cache_dir(),
            lib.config.cache_free_reserve.as_deref(),
        )?);
        let session = Arc::new(Session::new(session_config(
            &lib,
            opts,
            limit,
            Arc::new(StoreStorage {
                store: store.clone(),
                catalog: lib.catalog.clone(),
                content: content.clone(),
                pressure: pressure.clone(),
            }),
        ))?);
        content.set_session(&session);
        let events = session.take_events();
        let mountpoint = std::fs::canonicalize(&opts.mountpoint).unwrap_or(opts.mountpoint.clone());
        let daemon = Arc::new(Daemon {
            lib,
            store,
            session,
            content,
            uploader,
            fetcher,
            pressure,
            mountpoint,
            added: Mutex::new(HashMap::new()),
            shutdown_tx,
            journal,
            chunk_order,
        });
        daemon.sync();
        let weak = Arc::downgrade(&daemon);
        super::metrics::serve(rt.handle(), &daemon.lib.config, move || {
            weak.upgrade().map(|d| d.status())
        })?;
        super::watch::spawn(rt.handle(), &daemon.lib);
        if let Some(events) = events {
            // Weak: the thread ends when the session (owned by the daemon) is dropped.
            let d = Arc::downgrade(&daemon);
            std::thread::Builder::new()
                .name("bae-events".into())
                .spawn(move || {
                    for ev in events {
                        let Some(d) = d.upgrade() else { return };
                        d.on_event(ev);
                    }
                })
                .context("starting the event thread")?;
        }
        Ok(daemon)
    }

    /// Mounts the library's filesystem over the content.
    fn mount(
        &self,
        rt: &tokio::runtime::Runtime,
        opts: &DaemonOptions,
        fsname: String,
    ) -> anyhow::Result<MountHandle> {
        let config = &self.lib.config;
        Ok(crate::fs::mount(
            self.content.clone(),
            &opts.mountpoint,
            MountOptions {
                allow_other: opts.allow_other,
                permissions: opts.permissions.clone(),
                // The content bounds its own waits; this is a backstop a little beyond it.
                read_timeout: Some(Duration::from_secs(config.read_timeout_secs + 5)),
                runtime: Some(rt.handle().clone()),
                max_readahead_bytes: u64::from(config.readahead_chunks) * crate::model::CHUNK_LEN,
                fsname,
                // On the library's disk: the tree's pages are reclaimable there.
                tree_dir: Some(self.lib.home.clone()),
                ..MountOptions::default()
            },
        )?)
    }

    /// Starts the control socket's server, and the task that re-adds torrents whose
    /// damaged chunks (not in the remote) lost pieces: libtorrent must be told, by
    /// adding the torrent again with the store's verified pieces.
    fn serve(
        self: &Arc<Self>,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<[tokio::task::JoinHandle<()>; 3]> {
        let socket = self.lib.socket_path();
        let _ = std::fs::remove_file(&socket);
        let listener = {
            let _enter = rt.enter();
            tokio::net::UnixListener::bind(&socket)
                .with_context(|| format!("binding the control socket {}", socket.display()))?
        };
        let d = self.clone();
        let control = rt.spawn(control::serve(listener, move |req| {
            let d = d.clone();
            async move { d.handle(req).await }
        }));
        let d = self.clone();
        let rx = self.store.take_revocations();
        let revoke = rt.spawn(async move {
            let Some(mut rx) = rx else { return };
            while let Some(t) = rx.recv().await {
                let d = d.clone();
                let _ = tokio::task::spawn_blocking(move || d.readd(t)).await;
            }
        });
        // The first tick is at once: what loading the library and building the mount's
        // tree freed goes back as soon as the daemon serves.
        let trim = rt.spawn(async {
            let mut tick = tokio::time::interval(HEAP_TRIM_INTERVAL);
            loop {
                tick.tick().await;
                release_free_heap();
            }
        });
        Ok([control, revoke, trim])
    }
}

/// How often freed heap is handed back to the kernel while the daemon runs.
const HEAP_TRIM_INTERVAL: Duration = Duration::from_secs(60);

/// Hands freed heap pages back to the kernel. glibc keeps in its arenas what a burst of
/// work freed (a sync over thousands of torrents, a restore, a batch of uploads); without
/// this the idle RSS remembers the library's size long after the work is done.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// libtorrent's settings from the library's `[network]` config.
fn session_config(
    lib: &Library,
    opts: &DaemonOptions,
    limit: u64,
    storage: Arc<StoreStorage>,
) -> SessionConfig {
    let net = &lib.config.network;
    let port = opts.listen_port.unwrap_or(net.listen_port);
    SessionConfig {
        listen_interfaces: format!("{}:{port}", net.listen_address),
        enable_dht: net.dht,
        enable_lsd: net.lsd,
        enable_upnp: net.upnp,
        enable_natpmp: net.natpmp,
        enable_utp: net.utp,
        allow_multiple_connections_per_ip: true,
        storage,
        resume_dir: Some(lib.home.join("resume")),
        queue: QueueLimits {
            active_downloads: net.active_downloads,
            active_seeds: net.active_seeds,
            active_limit: net.active_limit,
        },
        recv_buffer_bytes: crate::tiering::pressure::peer_receive_buffer(limit),
    }
}

impl Daemon {
    /// Brings the session in line with the catalog: adds new torrents, removes
    /// deleted ones, applies pause, seeding and pin flags. Walks the whole library: at
    /// start, and for a command that does not say what it changed (the others use
    /// [`Daemon::sync_torrents`]).
    fn sync(&self) {
        let torrents = match self.lib.catalog.torrents() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the catalog");
                return;
            }
        };
        let mut added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: HashSet<TorrentId> = torrents.iter().map(|t| t.id).collect();
        let mut known: HashSet<TorrentId> = added.keys().copied().collect();
        known.extend(self.store.torrent_ids());
        for gone in known.into_iter().filter(|t| !wanted.contains(t)) {
            self.forget(&mut added, gone);
        }
        for t in &torrents {
            self.apply(&mut added, t);
        }
        self.content.sync(&torrents);
        self.journal.notify();
        drop(added);
        drop(torrents);
        release_free_heap();
    }

    /// [`Daemon::sync`] for the named torrents only (added, removed or re-flagged by a
    /// command), so that adding one album costs the same in any library.
    fn sync_torrents(&self, ids: &[TorrentId]) {
        let mut added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        for &id in ids {
            match self.lib.catalog.torrent(id) {
                Ok(t) => {
                    self.apply(&mut added, &t);
                    self.content.refresh(&t);
                }
                Err(CatalogError::UnknownTorrent(_)) => self.forget(&mut added, id),
                Err(e) => tracing::error!(torrent = %id, error = %e, "cannot read the catalog"),
            }
        }
        drop(added);
        self.journal.notify();
    }

    /// Torrent `gone` left the catalog: out of the session, the store and the mount.
    fn forget(&self, added: &mut HashMap<TorrentId, bool>, gone: TorrentId) {
        if added.remove(&gone).is_some() {
            self.chunk_order.forget(gone);
            if let Err(e) = self.session.remove(gone) {
                tracing::warn!(torrent = %gone, error = %e, "removing from the session");
            }
        }
        if let Err(e) = self.store.remove_torrent(gone) {
            tracing::warn!(torrent = %gone, error = %e, "removing cached chunks");
        }
        self.content.torrent_removed(gone);
    }

    /// Puts one catalog torrent's state into the store and the session: registered,
    /// pinned or not, in the session (added, paused or resumed) when it has work there.
    fn apply(&self, added: &mut HashMap<TorrentId, bool>, t: &TorrentRecord) {
        // A dormant torrent stays dormant (the store knows whether it is complete).
        let complete = t.geometry.is_some() && {
            let _ = self.store.ensure_known(t.id);
            self.store.is_complete(t.id)
        };
        // Only torrents with work for libtorrent are in the session: a paused one, or
        // a complete one that does not seed, costs nothing there (its reads are the
        // store's), so start-up and memory do not grow with the library.
        let active = !t.paused && (!complete || t.seeding);
        if let Some(g) = t.geometry {
            // A pinned torrent larger than the cache would fill it and stop; it is
            // downloaded and seeded unpinned instead.
            let fits = self.pressure.pin_fits(g.total_len());
            self.store
                .set_torrent_pinned(t.id, t.seeding && t.pin && fits);
        }
        if let Some(&was_active) = added.get(&t.id) {
            if was_active != active {
                let r = if active {
                    self.session.resume(t.id)
                } else {
                    self.session.pause(t.id)
                };
                match r {
                    Ok(()) => {
                        added.insert(t.id, active);
                    }
                    Err(e) => {
                        tracing::warn!(torrent = %t.id, error = %e, "applying pause state")
                    }
                }
            }
            return;
        }
        if !active {
            return;
        }
        let metainfo = match self.lib.catalog.metainfo(t.id) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(torrent = %t.id, error = %e, "cannot read the torrent's metadata");
                return;
            }
        };
        let source = match (metainfo, &t.magnet) {
            (Some(m), _) => Source::Metainfo(m),
            (None, Some(m)) => Source::Magnet(m.clone()),
            (None, None) => {
                tracing::error!(torrent = %t.id, "torrent has neither metainfo nor magnet");
                return;
            }
        };
        let peers: Vec<SocketAddr> = t.peers.iter().filter_map(|p| p.parse().ok()).collect();
        let opts = AddOptions {
            paused: false,
            peers,
            full_check: false,
        };
        match self.session.add(t.id, source, opts) {
            Ok(()) => {
                added.insert(t.id, true);
                self.chunk_order
                    .torrent_added(&self.store, &self.session, t.id);
            }
            Err(e) => tracing::error!(torrent = %t.id, error = %e, "cannot add torrent"),
        }
    }

    /// Removes a torrent from the session and adds it again from the catalog, so that
    /// libtorrent's have-pieces are the store's again (after pieces were revoked).
    fn readd(&self, t: TorrentId) {
        let was_added = self
            .added
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&t)
            .is_some();
        if was_added {
            tracing::info!(torrent = %t, "re-adding the torrent to download revoked pieces again");
            if let Err(e) = self.session.remove(t) {
                tracing::warn!(torrent = %t, error = %e, "removing from the session");
            }
        }
        self.sync_torrents(&[t]);
    }

    fn on_event(&self, ev: Event) {
        match ev {
            Event::MetadataReceived { t, torrent_bytes } => {
                let name = crate::torrent::parse_metainfo(&torrent_bytes)
                    .ok()
                    .map(|m| m.name);
                if let Err(e) = self
                    .lib
                    .catalog
                    .set_metainfo(t, &torrent_bytes, name.as_deref())
                {
                    tracing::error!(torrent = %t, error = %e, "cannot record metadata");
                }
                self.content.torrent_changed(t);
                self.journal.notify();
            }
            Event::PieceFinished { t, piece } => {
                self.chunk_order
                    .piece_finished(&self.store, &self.session, t, piece);
            }
            Event::TorrentFinished { t } => {
                self.chunk_order.forget(t);
                tracing::info!(torrent = %t, "download complete");
                if let Ok(rec) = self.lib.catalog.torrent(t) {
                    if !rec.seeding {
                        let _ = self.session.pause(t);
                    }
                }
            }
            Event::HashFailed { t, piece } => {
                tracing::warn!(torrent = %t, piece = piece.0, "piece failed its hash check; downloading it again");
            }
            Event::Error { t, message } => {
                tracing::error!(torrent = ?t, %message, "torrent error");
            }
            Event::TorrentChecked { .. } => {}
        }
    }

    async fn handle(self: Arc<Self>, req: Request) -> Response {
        match req {
            Request::Ping => Response::Pong {
                pid: std::process::id(),
                mountpoint: self.mountpoint.display().to_string(),
            },
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Sync { torrents } => {
                let d = self.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if torrents.is_empty() {
                        d.sync()
                    } else {
                        let ids: Vec<TorrentId> = torrents.into_iter().map(TorrentId).collect();
                        d.sync_torrents(&ids)
                    }
                })
                .await;
                // `add` is durable in the remote too when it returns (if the remote answers).
                if !self.journal.flush_meta(SYNC_META_WAIT).await {
                    tracing::warn!("torrent metadata not yet in the remote; will retry");
                }
                Response::Done {
                    message: "ok".into(),
                }
            }
            Request::Evict => {
                let store = self.store.clone();
                let mut progress = super::control::progress_reporter();
                match tokio::task::spawn_blocking(move || {
                    store.evict_all_with_progress(&mut progress)
                })
                .await
                {
                    Ok(n) => Response::Done {
                        message: format!("evicted {n} chunks"),
                    },
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                }
            }
            Request::Verify { torrent } => {
                let report =
                    super::verify::verify(&self.store, &*self.fetcher, TorrentId(torrent)).await;
                Response::Verify(report)
            }
            Request::Repair {
                torrent,
                bad_local,
                bad_remote,
            } => {
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || {
                    store.repair(TorrentId(torrent), &bad_local, &bad_remote)
                })
                .await
                {
                    Ok(s) => Response::Repaired(s),
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                }
            }
            Request::Import { torrent, dir } => {
                let d = self.clone();
                let mut progress = super::control::progress_reporter();
                let r = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                    let id = TorrentId(torrent);
                    let layout = d
                        .lib
                        .catalog
                        .layout(id)?
                        .ok_or_else(|| anyhow::anyhow!("torrent {id} has no layout"))?;
                    let n = super::import::store_content(
                        &d.store,
                        id,
                        Path::new(&dir),
                        &layout,
                        &mut progress,
                    )?;
                    d.sync_torrents(&[id]);
                    Ok(n)
                })
                .await;
                match r {
                    Ok(Ok(n)) => Response::Done {
                        message: format!("stored {n} bytes"),
                    },
                    Ok(Err(e)) => Response::Error {
                        message: format!("{e:#}"),
                    },
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                }
            }
            Request::Wait { torrent } => self.wait_verified(TorrentId(torrent)).await,
            Request::Shutdown { lazy } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = self.shutdown_tx.send((lazy, tx));
                match rx.await {
                    Ok(Ok(())) => Response::Done {
                        message: "stopping".into(),
                    },
                    Ok(Err(message)) => Response::Error { message },
                    Err(_) => Response::Done {
                        message: "stopping".into(),
                    },
                }
            }
        }
    }

    /// Answers [`Request::Wait`]: looks again whenever pieces are verified, and every
    /// second (errors, removal, and a heartbeat that notices a client gone).
    async fn wait_verified(&self, t: TorrentId) -> Response {
        let mut verified = self.store.watch_verified();
        loop {
            verified.borrow_and_update();
            let r = match self.lib.catalog.torrent(t) {
                Ok(rec) => super::report::live_one(&rec, &self.store, &self.session),
                Err(e) => {
                    return Response::Error {
                        message: e.to_string(),
                    }
                }
            };
            if let Some(e) = r.error {
                return Response::Error {
                    message: format!("{}: {e}", r.name),
                };
            }
            if r.size_bytes > 0 {
                // Verified bytes: the daemon's own count, never an estimate.
                let done = (r.progress * r.size_bytes as f64) as u64;
                super::control::report_progress(done.min(r.size_bytes), r.size_bytes);
                if r.progress >= 1.0 {
                    return Response::Done {
                        message: format!("{} is complete", r.name),
                    };
                }
            }
            tokio::select! {
                changed = verified.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(WAIT_HEARTBEAT).await;
                    }
                }
                () = tokio::time::sleep(WAIT_HEARTBEAT) => {}
            }
        }
    }

    fn status(&self) -> StatusReport {
        let mut report = StatusReport {
            daemon_running: true,
            mountpoint: Some(self.mountpoint.display().to_string()),
            listen_port: Some(self.session.listen_port()),
            cache: self.store.stats(),
            cache_limit_bytes: self.store.limit_bytes(),
            uploader: Some(self.uploader.status()),
            integrity: self.store.integrity_stats(),
            ..Default::default()
        };
        match super::report::live(&self.lib.catalog, &self.store, &self.session) {
            Ok(t) => report.torrents = t,
            Err(e) => report.warnings.push(format!("catalog: {e}")),
        }
        report.warnings.extend(self.pressure.status());
        for t in report.torrents.iter_mut() {
            if t.pinned && !self.pressure.pin_fits(t.size_bytes) {
                t.pinned = false;
                let limit = report.cache_limit_bytes;
                let w = crate::tiering::pressure::unpinned_warning(&t.name, t.size_bytes, limit);
                report.warnings.push(w);
            }
        }
        if report.cache.used_bytes > report.cache_limit_bytes {
            report.warnings.push(format!(
                "cache holds {} MiB, over its {} MiB limit: {} MiB are not uploaded yet or pinned by seeding",
                report.cache.used_bytes >> 20,
                report.cache_limit_bytes >> 20,
                (report.cache.used_bytes - report.cache.evictable_bytes) >> 20
            ));
        }
        if let Some(e) = report.uploader.as_ref().and_then(|u| u.last_error.clone()) {
            report
                .warnings
                .push(format!("uploads are failing (will retry): {e}"));
        }
        if let Some(n) = report
            .uploader
            .as_ref()
            .map(|u| u.parked)
            .filter(|&n| n > 0)
        {
            report.warnings.push(format!(
                "{n} chunks were refused by the remote and wait before the next attempt \
                 (check credentials and bucket policy; they stay in the cache)"
            ));
        }
        let i = report.integrity;
        if i.damaged_local_chunks > 0 {
            report.warnings.push(format!(
                "{} local chunks were damaged (missing or altered): {} fetched again from the remote, {} downloaded again",
                i.damaged_local_chunks,
                i.damaged_local_chunks - i.revoked_chunks.min(i.damaged_local_chunks),
                i.revoked_chunks
            ));
        }
        if i.remote_integrity_errors > 0 {
            report.warnings.push(format!(
                "{} objects from the remote failed their integrity check (tampered, swapped or wrong key); never served",
                i.remote_integrity_errors
            ));
        }
        if i.remote_missing > 0 {
            report.warnings.push(format!(
                "{} chunks were missing from the remote",
                i.remote_missing
            ));
        }
        report
    }

    async fn shutdown(self: Arc<Self>) {
        tracing::info!("stopping");
        // No new pieces from here on: what is verified now is what gets recorded.
        for t in self.added.lock().unwrap_or_else(|e| e.into_inner()).keys() {
            let _ = self.session.pause(*t);
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "recording verified pieces at shutdown");
        }
        // Uploads that are failing (remote down, disk full) will not finish in the grace
        // period: waiting for them would only make stopping slow.
        if self.uploader.status().last_error.is_some() {
            tracing::info!("uploads are failing; they resume at the next start");
        } else if !self.uploader.wait_idle(SHUTDOWN_UPLOAD_GRACE).await {
            tracing::info!("uploads not finished; they resume at the next start");
        }
        if !self.journal.flush_meta(Duration::from_secs(10)).await {
            tracing::warn!("some remote metadata is not written yet; it is at the next start");
        }
        if let Err(e) = self.store.shutdown() {
            tracing::error!(error = %e, "store shutdown");
        }
    }
}
