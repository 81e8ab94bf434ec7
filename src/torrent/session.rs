//! A libtorrent session whose disk I/O goes through bae's [`TorrentStorage`], with a
//! safe API keyed by [`TorrentId`] and a stream of [`Event`]s.
//!
//! Threads: libtorrent's network thread (C++), the disk workers (`disk.rs`), one alert
//! thread started here, which turns alerts into store calls (`pieces_verified`) and
//! events, and, with a resume directory, a `bae-resume` thread writing resume files.
//! Dropping the [`Session`] saves the last resume data (bounded wait), stops the alert
//! thread, then destroys the libtorrent session, which destroys the C++ disk object,
//! which joins the disk workers.
//!
//! Resume data (see [`resume`](super::resume)): every [`RESUME_SAVE_INTERVAL`] the alert
//! thread asks libtorrent for the resume data of torrents that stored blocks since the
//! last time, and at add it is handed back so that blocks of unfinished pieces are not
//! downloaded again after a crash. The store's verified pieces stay authoritative.
//!
//! Lock order: `torrents` → `sweep` → `given` → `complete_at_add`; `resume_jobs` alone;
//! none is held across a libtorrent call.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cxx::UniquePtr;

use crate::model::{PieceIndex, TorrentId};
use crate::torrent::bridge::ffi;
use crate::torrent::disk::{save_path_for, DiskCore, DiskHandle, Prepared};
use crate::torrent::metainfo::{parse_magnet, parse_metainfo};
use crate::torrent::resume::{self, Outstanding, ResumeFiles, ResumeJob};
use crate::torrent::storage::TorrentStorage;
use crate::torrent::TorrentError;

/// How long the alert thread waits for alerts before checking for shutdown.
const ALERT_WAIT_MS: u32 = 200;

/// How often torrents that stored blocks get their resume data saved. What a `kill -9`
/// can cost is the blocks of unfinished pieces stored since the last save, so this is
/// short (a kill costs about this long of download); a save is a small file per
/// downloading torrent, written off the alert thread.
pub const RESUME_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// How long dropping the session waits for the last resume data to be written.
const RESUME_SAVE_AT_STOP: Duration = Duration::from_secs(3);

/// Session settings. Tests use [`SessionConfig::loopback`].
#[derive(Clone)]
pub struct SessionConfig {
    /// libtorrent's `listen_interfaces`, e.g. "0.0.0.0:6881" or "127.0.0.1:0".
    pub listen_interfaces: String,
    pub enable_dht: bool,
    pub enable_lsd: bool,
    pub enable_upnp: bool,
    pub enable_natpmp: bool,
    /// uTP crawls over loopback with libtorrent 2.0.8; TCP only in tests.
    pub enable_utp: bool,
    /// Needed when every peer is on 127.0.0.1.
    pub allow_multiple_connections_per_ip: bool,
    pub storage: Arc<dyn TorrentStorage>,
    /// Where resume data is kept (see the module comment); `None`: not kept.
    pub resume_dir: Option<PathBuf>,
    /// Torrents are auto-managed: libtorrent's queue keeps at most this many
    /// downloading, seeding, and active in all (a library seeds thousands of albums).
    pub queue: QueueLimits,
    /// Each peer socket's receive buffer in bytes; 0 leaves it to the OS. What a peer
    /// has sent into it still arrives after downloads were told to wait (libtorrent
    /// drains a socket whole), so a bounded cache bounds it: see
    /// `tiering::pressure::peer_receive_buffer`.
    pub recv_buffer_bytes: u32,
}

/// libtorrent's `active_downloads`, `active_seeds`, `active_limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    pub active_downloads: u32,
    pub active_seeds: u32,
    pub active_limit: u32,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            active_downloads: 8,
            active_seeds: 200,
            active_limit: 1000,
        }
    }
}

impl SessionConfig {
    /// Listens on 127.0.0.1 (a free port), TCP only, no DHT/LSD/UPnP/NAT-PMP: for tests.
    pub fn loopback(storage: Arc<dyn TorrentStorage>) -> Self {
        SessionConfig {
            listen_interfaces: "127.0.0.1:0".into(),
            enable_dht: false,
            enable_lsd: false,
            enable_upnp: false,
            enable_natpmp: false,
            enable_utp: false,
            allow_multiple_connections_per_ip: true,
            storage,
            resume_dir: None,
            queue: QueueLimits::default(),
            recv_buffer_bytes: 0,
        }
    }
}

/// Where a torrent's metadata comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A bencoded .torrent.
    Metainfo(Vec<u8>),
    /// A magnet link: metadata comes from peers ([`Event::MetadataReceived`]).
    Magnet(String),
}

#[derive(Clone, Debug, Default)]
pub struct AddOptions {
    pub paused: bool,
    /// Peers to connect to right away.
    pub peers: Vec<SocketAddr>,
    /// Hash the data already in the store once (for `bae import`) instead of trusting
    /// the store's verified pieces.
    pub full_check: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorrentState {
    CheckingFiles,
    DownloadingMetadata,
    Downloading,
    Finished,
    Seeding,
    CheckingResume,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TorrentStatus {
    pub state: TorrentState,
    pub paused: bool,
    /// 0.0 ..= 1.0
    pub progress: f32,
    pub download_rate_bps: u64,
    pub upload_rate_bps: u64,
    pub peers: u32,
    pub seeds: u32,
    pub pieces_have: u32,
    /// 0 until the metadata is known.
    pub pieces_total: u32,
    pub total_done_bytes: u64,
    pub total_wanted_bytes: u64,
    pub error: Option<String>,
}

/// What happened in the session, in the order libtorrent reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A magnet's metadata arrived: the bencoded torrent (its info dict exactly as
    /// received, so the info hash is unchanged) to keep for re-adding.
    MetadataReceived {
        t: TorrentId,
        torrent_bytes: Vec<u8>,
    },
    /// A piece passed its hash check; the store was told before this event was sent.
    /// Not sent for the verified pieces the store handed in when the torrent was added.
    PieceFinished { t: TorrentId, piece: PieceIndex },
    /// A piece failed its hash check; it will be downloaded again.
    HashFailed { t: TorrentId, piece: PieceIndex },
    /// The torrent's data was checked (after add, or after a full check).
    TorrentChecked { t: TorrentId },
    /// Every wanted piece is verified.
    TorrentFinished { t: TorrentId },
    /// A torrent (or, with `t: None`, the session) hit an error.
    Error {
        t: Option<TorrentId>,
        message: String,
    },
}

struct Inner {
    ffi: UniquePtr<ffi::Session>,
    disk: Arc<DiskCore>,
    torrents: Mutex<HashSet<TorrentId>>,
    /// Torrents whose verified pieces the store must be told once checked (magnets,
    /// full checks): libtorrent learned them by hashing, not from the store.
    sweep: Mutex<HashSet<TorrentId>>,
    /// The have-pieces each torrent was added with, until it is checked: libtorrent
    /// reports every one of them as finished, and the store knows them already.
    given: Mutex<HashMap<TorrentId, Vec<bool>>>,
    /// Torrents added with every piece verified: their first "finished" needs no sweep.
    complete_at_add: Mutex<HashSet<TorrentId>>,
    resume: Option<Resume>,
}

/// Resume data keeping: the files, the queue of the `bae-resume` thread, and what was
/// asked of libtorrent and not yet written.
struct Resume {
    files: ResumeFiles,
    resume_jobs: Mutex<Sender<ResumeJob>>,
    outstanding: Arc<Outstanding>,
}

impl Inner {
    /// Asks libtorrent for the resume data of every torrent that stored blocks since
    /// the last time.
    fn request_resume_data(&self) {
        let Some(resume) = &self.resume else { return };
        let changed = self.disk.take_changed();
        let known: Vec<TorrentId> = {
            let torrents = lock(&self.torrents);
            changed
                .into_iter()
                .filter(|t| torrents.contains(t))
                .collect()
        };
        for t in known {
            resume.outstanding.add(1);
            if let Err(e) = self.ffi.save_resume_data(t.0) {
                resume.outstanding.finish_one();
                tracing::debug!(torrent = %t, error = e.what(), "cannot ask for resume data");
            }
        }
    }

    fn send_resume_job(&self, job: ResumeJob) -> bool {
        let Some(resume) = &self.resume else {
            return false;
        };
        lock(&resume.resume_jobs).send(job).is_ok()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn session_err(e: cxx::Exception) -> TorrentError {
    TorrentError::Session(e.what().to_owned())
}

/// A running libtorrent session. See the module doc for threads and shutdown.
pub struct Session {
    inner: Arc<Inner>,
    stop: Arc<AtomicBool>,
    alert_thread: Option<JoinHandle<()>>,
    events: Mutex<Option<Receiver<Event>>>,
}

impl Session {
    pub fn new(config: SessionConfig) -> Result<Session, TorrentError> {
        let disk = DiskCore::start(Arc::clone(&config.storage)).map_err(TorrentError::Workers)?;
        let opts = ffi::SessionOptions {
            listen_interfaces: config.listen_interfaces.clone(),
            enable_dht: config.enable_dht,
            enable_lsd: config.enable_lsd,
            enable_upnp: config.enable_upnp,
            enable_natpmp: config.enable_natpmp,
            enable_utp: config.enable_utp,
            allow_multiple_connections_per_ip: config.allow_multiple_connections_per_ip,
            active_downloads: i32::try_from(config.queue.active_downloads).unwrap_or(i32::MAX),
            active_seeds: i32::try_from(config.queue.active_seeds).unwrap_or(i32::MAX),
            active_limit: i32::try_from(config.queue.active_limit).unwrap_or(i32::MAX),
            recv_buffer_bytes: i32::try_from(config.recv_buffer_bytes).unwrap_or(i32::MAX),
        };
        let handle = Box::new(DiskHandle::new(Arc::clone(&disk)));
        let ffi = ffi::new_session(&opts, handle).map_err(session_err)?;
        let resume = match config.resume_dir.clone() {
            Some(dir) => {
                let files = ResumeFiles::new(dir);
                let outstanding = Arc::new(Outstanding::default());
                let (jobs_tx, jobs_rx) = channel();
                {
                    let files = files.clone();
                    let outstanding = Arc::clone(&outstanding);
                    // Ends when the session (the only sender) is gone.
                    std::thread::Builder::new()
                        .name("bae-resume".into())
                        .spawn(move || resume::run_writer(files, jobs_rx, &outstanding))
                        .map_err(TorrentError::Workers)?;
                }
                Some(Resume {
                    files,
                    resume_jobs: Mutex::new(jobs_tx),
                    outstanding,
                })
            }
            None => None,
        };
        let inner = Arc::new(Inner {
            ffi,
            disk,
            torrents: Mutex::new(HashSet::new()),
            sweep: Mutex::new(HashSet::new()),
            given: Mutex::new(HashMap::new()),
            complete_at_add: Mutex::new(HashSet::new()),
            resume,
        });
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let alert_thread = {
            let inner = Arc::clone(&inner);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("bae-alerts".into())
                .spawn(move || alert_loop(&inner, &stop, &tx))
                .map_err(TorrentError::Workers)?
        };
        Ok(Session {
            inner,
            stop,
            alert_thread: Some(alert_thread),
            events: Mutex::new(Some(rx)),
        })
    }

    /// The session's events. Returns the receiver once; later calls get None.
    pub fn take_events(&self) -> Option<Receiver<Event>> {
        lock(&self.events).take()
    }

    /// The TCP port libtorrent listens on (0 if it listens nowhere).
    pub fn listen_port(&self) -> u16 {
        self.inner.ffi.listen_port()
    }

    /// Adds a torrent. For a .torrent, the store is opened first and its verified pieces
    /// become the torrent's have-pieces, so nothing verified is checked or downloaded
    /// again. For a magnet, the store is opened once the metadata arrives.
    pub fn add(&self, t: TorrentId, source: Source, opts: AddOptions) -> Result<(), TorrentError> {
        if lock(&self.inner.torrents).contains(&t) {
            return Err(TorrentError::AlreadyAdded(t));
        }
        let storage = self.inner.disk.storage();
        let mut req = ffi::AddRequest {
            id: t.0,
            save_path: save_path_for(t),
            torrent_bytes: Vec::new(),
            magnet: String::new(),
            have_pieces: Vec::new(),
            resume: Vec::new(),
            paused: opts.paused,
            peers: opts.peers.iter().map(SocketAddr::to_string).collect(),
        };
        let prepared = match source {
            Source::Metainfo(bytes) => {
                let meta = parse_metainfo(&bytes)?;
                let have = storage.open(t, &meta.layout)?;
                if have.len() != meta.layout.num_pieces() as usize {
                    storage.close(t);
                    return Err(TorrentError::HaveMismatch {
                        t,
                        got: have.len(),
                        pieces: meta.layout.num_pieces(),
                    });
                }
                req.have_pieces = have.iter().map(|&h| u8::from(h)).collect();
                req.torrent_bytes = bytes;
                // Not for a full check: it hashes everything anyway.
                if let (Some(resume), false) = (&self.inner.resume, opts.full_check) {
                    req.resume = resume.files.load(t);
                }
                Prepared {
                    opened: true,
                    full_check: opts.full_check,
                    info_hash_v1: meta.info_hash_v1(),
                    info_hash_v2: meta.info_hash_v2(),
                }
            }
            Source::Magnet(uri) => {
                let magnet = parse_magnet(&uri)?;
                req.magnet = uri;
                Prepared {
                    opened: false,
                    full_check: opts.full_check,
                    info_hash_v1: magnet.info_hash_v1,
                    info_hash_v2: magnet.info_hash_v2,
                }
            }
        };
        let opened = prepared.opened;
        if !opened || opts.full_check {
            lock(&self.inner.sweep).insert(t);
        }
        self.inner.disk.prepare(t, prepared);
        lock(&self.inner.torrents).insert(t);
        if req.have_pieces.iter().any(|&h| h != 0) {
            let given: Vec<bool> = req.have_pieces.iter().map(|&h| h != 0).collect();
            if given.iter().all(|&h| h) {
                lock(&self.inner.complete_at_add).insert(t);
            }
            lock(&self.inner.given).insert(t, given);
        }
        if let Err(e) = self.inner.ffi.add_torrent(&req) {
            lock(&self.inner.torrents).remove(&t);
            lock(&self.inner.sweep).remove(&t);
            lock(&self.inner.given).remove(&t);
            self.inner.disk.unprepare(t);
            if opened {
                storage.close(t);
            }
            return Err(TorrentError::Add {
                t,
                reason: e.what().to_owned(),
            });
        }
        Ok(())
    }

    fn known(&self, t: TorrentId) -> Result<(), TorrentError> {
        if lock(&self.inner.torrents).contains(&t) {
            Ok(())
        } else {
            Err(TorrentError::UnknownTorrent(t))
        }
    }

    /// Removes a torrent from the session; the store's data stays (the store is closed
    /// once libtorrent releases the storage). Its resume data goes: a torrent added
    /// again starts from the store's verified pieces alone.
    pub fn remove(&self, t: TorrentId) -> Result<(), TorrentError> {
        self.known(t)?;
        self.inner.ffi.remove_torrent(t.0).map_err(session_err)?;
        self.inner.send_resume_job(ResumeJob::Discard(t));
        lock(&self.inner.torrents).remove(&t);
        lock(&self.inner.sweep).remove(&t);
        lock(&self.inner.given).remove(&t);
        lock(&self.inner.complete_at_add).remove(&t);
        Ok(())
    }

    pub fn pause(&self, t: TorrentId) -> Result<(), TorrentError> {
        self.known(t)?;
        self.inner.ffi.pause_torrent(t.0).map_err(session_err)
    }

    pub fn resume(&self, t: TorrentId) -> Result<(), TorrentError> {
        self.known(t)?;
        self.inner.ffi.resume_torrent(t.0).map_err(session_err)
    }

    /// Asks libtorrent to have `piece` within `deadline_ms` (streaming reads).
    pub fn set_piece_deadline(
        &self,
        t: TorrentId,
        piece: PieceIndex,
        deadline_ms: u32,
    ) -> Result<(), TorrentError> {
        self.known(t)?;
        let deadline_ms = i32::try_from(deadline_ms).unwrap_or(i32::MAX);
        self.inner
            .ffi
            .set_piece_deadline(t.0, piece.0, deadline_ms)
            .map_err(session_err)
    }

    /// libtorrent piece priority: 0 (skip) ..= 7 (top).
    pub fn set_piece_priority(
        &self,
        t: TorrentId,
        piece: PieceIndex,
        priority: u8,
    ) -> Result<(), TorrentError> {
        self.known(t)?;
        self.inner
            .ffi
            .set_piece_priority(t.0, piece.0, priority.min(7))
            .map_err(session_err)
    }

    pub fn connect_peer(&self, t: TorrentId, addr: SocketAddr) -> Result<(), TorrentError> {
        self.known(t)?;
        self.inner
            .ffi
            .connect_peer(t.0, &addr.to_string())
            .map_err(session_err)
    }

    pub fn status(&self, t: TorrentId) -> Result<TorrentStatus, TorrentError> {
        self.known(t)?;
        let st = self.inner.ffi.torrent_status(t.0).map_err(session_err)?;
        let state = match st.state {
            ffi::TorrentStateFfi::CheckingFiles => TorrentState::CheckingFiles,
            ffi::TorrentStateFfi::DownloadingMetadata => TorrentState::DownloadingMetadata,
            ffi::TorrentStateFfi::Downloading => TorrentState::Downloading,
            ffi::TorrentStateFfi::Finished => TorrentState::Finished,
            ffi::TorrentStateFfi::Seeding => TorrentState::Seeding,
            _ => TorrentState::CheckingResume,
        };
        Ok(TorrentStatus {
            state,
            paused: st.paused,
            progress: st.progress,
            download_rate_bps: u64::try_from(st.download_rate).unwrap_or(0),
            upload_rate_bps: u64::try_from(st.upload_rate).unwrap_or(0),
            peers: st.peers,
            seeds: st.seeds,
            pieces_have: st.pieces_have,
            pieces_total: st.pieces_total,
            total_done_bytes: u64::try_from(st.total_done).unwrap_or(0),
            total_wanted_bytes: u64::try_from(st.total_wanted).unwrap_or(0),
            error: Some(st.error).filter(|e| !e.is_empty()),
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(resume) = &self.inner.resume {
            // The alert thread still runs: it receives the answers.
            self.inner.request_resume_data();
            if !resume.outstanding.wait(RESUME_SAVE_AT_STOP) {
                tracing::warn!("resume data not all saved at stop");
            }
        }
        self.inner.disk.stop_holding();
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.alert_thread.take() {
            if thread.join().is_err() {
                tracing::error!("the alert thread panicked");
            }
        }
        // The alert thread held the only other reference: this drops the C++ session,
        // which stops libtorrent and joins the disk workers.
    }
}

fn torrent_id(id: i64) -> Option<TorrentId> {
    (id >= 0).then_some(TorrentId(id))
}

/// Tells the store every piece libtorrent has for `t`.
fn sweep_verified(inner: &Inner, t: TorrentId) {
    match inner.ffi.have_pieces(t.0) {
        Ok(pieces) if !pieces.is_empty() => {
            let pieces: Vec<PieceIndex> = pieces.into_iter().map(PieceIndex).collect();
            inner.disk.storage().pieces_verified(t, &pieces);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(torrent = %t, error = e.what(), "cannot list verified pieces"),
    }
}

/// Whether `a` is libtorrent echoing a piece the store handed in at add time.
fn was_given(inner: &Inner, a: &ffi::AlertFfi) -> bool {
    let (ffi::AlertKind::PieceFinished, Some(t)) = (a.kind, torrent_id(a.id)) else {
        return false;
    };
    let mut given = lock(&inner.given);
    let Some(pieces) = given.get_mut(&t) else {
        return false;
    };
    match pieces.get_mut(a.piece as usize) {
        Some(have) if *have => {
            // Only once: a later report of this piece is a new verification.
            *have = false;
            true
        }
        _ => false,
    }
}

fn alert_loop(inner: &Inner, stop: &AtomicBool, events: &Sender<Event>) {
    let mut last_resume_save = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if last_resume_save.elapsed() >= RESUME_SAVE_INTERVAL {
            last_resume_save = Instant::now();
            inner.request_resume_data();
        }
        let mut alerts = inner.ffi.wait_alerts(ALERT_WAIT_MS);
        alerts.retain(|a| !was_given(inner, a));
        // Tell the store about a batch of verified pieces at once, before the events.
        let mut verified: Vec<(TorrentId, Vec<PieceIndex>)> = Vec::new();
        for a in &alerts {
            if let (ffi::AlertKind::PieceFinished, Some(t)) = (a.kind, torrent_id(a.id)) {
                match verified.iter_mut().find(|(vt, _)| *vt == t) {
                    Some((_, pieces)) => pieces.push(PieceIndex(a.piece)),
                    None => verified.push((t, vec![PieceIndex(a.piece)])),
                }
            }
        }
        for (t, pieces) in &verified {
            tracing::trace!(torrent = %t, ?pieces, "pieces finished");
            inner.disk.storage().pieces_verified(*t, pieces);
        }
        for a in alerts {
            let t = torrent_id(a.id);
            let event = match (a.kind, t) {
                (ffi::AlertKind::PieceFinished, Some(t)) => Event::PieceFinished {
                    t,
                    piece: PieceIndex(a.piece),
                },
                (ffi::AlertKind::HashFailed, Some(t)) => {
                    tracing::warn!(torrent = %t, piece = a.piece, "piece failed its hash check");
                    Event::HashFailed {
                        t,
                        piece: PieceIndex(a.piece),
                    }
                }
                (ffi::AlertKind::MetadataReceived, Some(t)) => Event::MetadataReceived {
                    t,
                    torrent_bytes: a.bytes,
                },
                (ffi::AlertKind::TorrentChecked, Some(t)) => {
                    lock(&inner.given).remove(&t);
                    if lock(&inner.sweep).remove(&t) {
                        sweep_verified(inner, t);
                    }
                    Event::TorrentChecked { t }
                }
                (ffi::AlertKind::TorrentFinished, Some(t)) => {
                    // A safety net in case piece alerts were dropped (idempotent in the
                    // store); not needed when the store handed in every piece.
                    if !lock(&inner.complete_at_add).remove(&t) {
                        sweep_verified(inner, t);
                    }
                    Event::TorrentFinished { t }
                }
                (ffi::AlertKind::AlertsDropped, _) => {
                    // Verified pieces may have been among them: libtorrent's own
                    // have-pieces are handed to the store again (it ignores known ones).
                    tracing::warn!("libtorrent dropped alerts; reconciling verified pieces");
                    let all: Vec<TorrentId> = lock(&inner.torrents).iter().copied().collect();
                    for t in all {
                        sweep_verified(inner, t);
                    }
                    continue;
                }
                (ffi::AlertKind::ResumeData, t) => {
                    let known = t.filter(|t| lock(&inner.torrents).contains(t));
                    let sent =
                        known.is_some_and(|t| inner.send_resume_job(ResumeJob::Save(t, a.bytes)));
                    if !sent {
                        if let Some(r) = &inner.resume {
                            r.outstanding.finish_one();
                        }
                    }
                    continue;
                }
                (ffi::AlertKind::ResumeDataFailed, t) => {
                    tracing::debug!(torrent = ?t, message = %a.message, "no resume data");
                    if let Some(r) = &inner.resume {
                        r.outstanding.finish_one();
                    }
                    continue;
                }
                (ffi::AlertKind::TorrentError | ffi::AlertKind::SessionError, t) => {
                    tracing::error!(torrent = ?t, message = %a.message, "libtorrent error");
                    Event::Error {
                        t,
                        message: a.message,
                    }
                }
                _ => continue,
            };
            // A dropped receiver only means nobody listens.
            let _ = events.send(event);
        }
    }
}
