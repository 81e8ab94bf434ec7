//! Rust's half of libtorrent's disk subsystem: the storages libtorrent opened, the job
//! queues, and the workers that run jobs against [`TorrentStorage`].
//!
//! The C++ `BaeDisk` calls the `submit_*` methods on libtorrent's network thread; they
//! only copy and enqueue, never block on I/O. Three queues keep slow work apart:
//! - `write`: writes, check_files, clear_piece, stop/release barriers, close — one worker,
//!   FIFO, so a barrier or a `piece_failed` runs after every write issued before it;
//! - `hash`: v1/v2 piece and block hashes — one worker;
//! - `read`: peer reads, which may fetch evicted chunks from the remote — four workers,
//!   so a slow fetch never stalls writes or hashing;
//! - `hint`: one worker that tells the storage of each peer read as it is queued
//!   ([`TorrentStorage::will_read`], once per chunk in a row), so the fetches of the
//!   chunks a peer asked for run together instead of one per read worker at a time.
//!
//! libtorrent may read a block as soon as its write is queued, not completed. Each slot
//! therefore keeps the blocks handed to the write queue and not yet stored (`pending`);
//! reads copy them over what the storage returns. Hashes instead wait until the piece's
//! pending blocks are stored: a piece is reported verified (and the store told so) only
//! once every byte that was hashed is in the store.
//!
//! Every job completes exactly once: normally through `complete_job`, or — if a job is
//! dropped (queue closed, session shutting down, panic in a storage implementation) — by
//! the C++ destructor, which posts `operation_aborted`. Once libtorrent starts shutting
//! down (`abort`), queued reads and hashes are dropped that way instead of run, so only
//! storage calls already under way delay shutdown; writes always run. Nothing here
//! panics into C++.
//!
//! Backpressure (`backpressure.rs`): `submit_write` tells libtorrent whether the cache
//! bound or the free-space reserve is reached; a monitor thread samples the storage's
//! room every [`SAMPLE`]. While the gate is closed, blocks are still stored (so their
//! pieces are hashed and committed, and uploads drain) but their completions are held,
//! which keeps libtorrent's peers from reading more; opening the gate releases them and
//! completes the waiter job that wakes libtorrent's disk observers. A barrier, `abort`
//! and shutdown release everything held, so nothing waits on the gate at shutdown.
//! A write that finds the disk full (ENOSPC) is retried until there is room (or the
//! session stops): libtorrent never sees a full disk as a write error, which would put
//! the torrent in upload mode, and the store never records a block it did not keep.
//!
//! Torrents with a block stored since the last [`DiskCore::take_changed`] are recorded,
//! after libtorrent was told of the write: the session saves their resume data.
//!
//! Lock order: `slots` → `prepared` are never held together with a slot's `pending`;
//! each lock is held only for map operations, never across storage calls; `changed` is
//! taken alone.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cxx::UniquePtr;
use sha1::{Digest, Sha1};
use sha2::Sha256;

use crate::model::CHUNK_LEN;
use crate::model::{PieceIndex, TorrentId};
use crate::torrent::backpressure::{Cost, Gate};
use crate::torrent::bridge::ffi::{self, CheckStatus, DiskJob, DiskOp, JobResult};
use crate::torrent::metainfo::layout_from_ffi;
use crate::torrent::storage::{StorageError, TorrentLayout, TorrentStorage};

/// BitTorrent's block size: v2 hashes one leaf per block.
pub(crate) const BLOCK_LEN: u64 = 16 * 1024;

const SAVE_PATH_PREFIX: &str = "bae-torrent:";
const READ_WORKERS: usize = 4;
/// How often the storage's room is sampled (it walks the store's accounting and calls
/// statvfs, so not per block).
pub(crate) const SAMPLE: Duration = Duration::from_millis(250);
/// The least room asked of the storage at each sample.
const MIN_WANT: u64 = 8 << 20;
/// Pause between attempts of a write that found the disk full.
const NO_SPACE_RETRY: Duration = Duration::from_millis(250);

/// libtorrent's `save_path` for a torrent: the only per-torrent string that reaches
/// `new_torrent`, so it carries the TorrentId. Absolute, because libtorrent makes a
/// relative save_path absolute; nothing is ever created there.
pub(crate) fn save_path_for(t: TorrentId) -> String {
    format!("/{SAVE_PATH_PREFIX}{}", t.0)
}

fn torrent_of_save_path(path: &str) -> Option<TorrentId> {
    path.rsplit('/')
        .next()?
        .strip_prefix(SAVE_PATH_PREFIX)?
        .parse()
        .ok()
        .map(TorrentId)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What `Session::add` learned about a torrent before libtorrent creates its storage.
#[derive(Clone, Debug, Default)]
pub(crate) struct Prepared {
    /// `open()` already ran and its have-pieces went into add_torrent_params.
    pub opened: bool,
    /// Hash the existing data once (import) instead of trusting the have-pieces.
    pub full_check: bool,
    pub info_hash_v1: Option<[u8; 20]>,
    pub info_hash_v2: Option<[u8; 32]>,
}

/// Whom a read is for: a peer, or libtorrent's own hash check.
#[derive(Clone, Copy)]
enum Purpose {
    Peer,
    Check,
}

/// A block queued for writing: its write sequence number and bytes.
type PendingBlock = (u64, Arc<[u8]>);

/// One storage libtorrent opened.
struct Slot {
    /// None when libtorrent's save_path was not ours: every job then fails.
    torrent: Option<TorrentId>,
    layout: TorrentLayout,
    prepared: Prepared,
    /// Blocks queued for writing and not yet stored: stream offset → (sequence, bytes).
    pending: Mutex<BTreeMap<u64, PendingBlock>>,
    /// Signalled whenever a block leaves `pending` and someone waits (`waiting`).
    stored: Condvar,
    /// Threads waiting on `stored`; changed and read under `pending`'s lock.
    waiting: AtomicUsize,
    next_seq: Mutex<u64>,
    /// The chunk (+1) of the last peer read hinted to the storage: a peer asks for a
    /// piece block by block, and one hint per chunk in a row is enough.
    last_hint: AtomicU64,
}

impl Slot {
    /// Blocks until no write overlapping `[offset, offset + len)` is pending.
    fn wait_for_writes(&self, offset: u64, len: u64) {
        let end = offset + len;
        let mut pending = lock(&self.pending);
        while pending
            .range(offset.saturating_sub(BLOCK_LEN)..end)
            .any(|(&at, (_, data))| at + data.len() as u64 > offset)
        {
            self.waiting.fetch_add(1, Ordering::Relaxed);
            pending = self
                .stored
                .wait(pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Reads `buf.len()` stream bytes at `offset`, overlaid with pending writes. The
    /// overlay is snapshotted before reading the storage: a block that leaves `pending`
    /// meanwhile is in the storage by then.
    fn read_through(
        &self,
        storage: &dyn TorrentStorage,
        (t, purpose): (TorrentId, Purpose),
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
        self.read_overlaid(offset, buf, |buf| {
            Some(match purpose {
                Purpose::Peer => storage.read(t, offset, buf),
                Purpose::Check => storage.read_to_hash(t, offset, buf),
            })
        })
        .unwrap_or(Ok(()))
    }

    /// [`Slot::read_through`] with the storage's `read_now`: `None` when the storage
    /// cannot answer without waiting.
    fn read_through_now(
        &self,
        storage: &dyn TorrentStorage,
        t: TorrentId,
        offset: u64,
        buf: &mut [u8],
    ) -> Option<Result<(), StorageError>> {
        self.read_overlaid(offset, buf, |buf| storage.read_now(t, offset, buf))
    }

    fn read_overlaid(
        &self,
        offset: u64,
        buf: &mut [u8],
        read: impl FnOnce(&mut [u8]) -> Option<Result<(), StorageError>>,
    ) -> Option<Result<(), StorageError>> {
        let end = offset + buf.len() as u64;
        let overlay: Vec<(u64, Arc<[u8]>)> = {
            let pending = lock(&self.pending);
            let first = offset.saturating_sub(BLOCK_LEN);
            pending
                .range(first..end)
                .map(|(&at, (_, data))| (at, Arc::clone(data)))
                .filter(|(at, data)| at + data.len() as u64 > offset)
                .collect()
        };
        if let Err(e) = read(buf)? {
            return Some(Err(e));
        }
        for (at, data) in overlay {
            let from = at.max(offset);
            let to = (at + data.len() as u64).min(end);
            let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
            dst.copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
        }
        Some(Ok(()))
    }
}

type Task = Box<dyn FnOnce() + Send>;

/// A FIFO of tasks served by its own workers until closed; closing lets the workers
/// drain what is queued, then exit.
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

struct QueueState {
    tasks: VecDeque<Task>,
    closed: bool,
    /// Workers waiting for a task: only they need waking (a wake-up is a system call,
    /// and a busy worker takes the next task without one).
    idle: usize,
}

impl Queue {
    fn new() -> Arc<Queue> {
        Arc::new(Queue {
            state: Mutex::new(QueueState {
                tasks: VecDeque::new(),
                closed: false,
                idle: 0,
            }),
            ready: Condvar::new(),
        })
    }

    fn push(&self, task: Task) {
        let mut state = lock(&self.state);
        // A task pushed after close is dropped; its DiskJob completes as aborted.
        if !state.closed {
            state.tasks.push_back(task);
            if state.idle > 0 {
                self.ready.notify_one();
            }
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_all();
    }

    fn run(&self) {
        loop {
            let task = {
                let mut state = lock(&self.state);
                loop {
                    if let Some(task) = state.tasks.pop_front() {
                        break task;
                    }
                    if state.closed {
                        return;
                    }
                    state.idle += 1;
                    state = self
                        .ready
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    state.idle -= 1;
                }
            };
            // A panicking storage must not take the worker down; the job's DiskJob is
            // dropped during unwinding and completes as aborted.
            if catch_unwind(AssertUnwindSafe(task)).is_err() {
                tracing::error!("a disk job panicked; it was reported to libtorrent as aborted");
            }
        }
    }
}

/// The gate plus what waits on it. See the module comment.
struct GateState {
    gate: Gate,
    /// Completions of stored blocks, held while the gate is closed.
    held: Vec<(UniquePtr<DiskJob>, TorrentId)>,
    /// libtorrent's request to be told when there is room again (one at a time).
    waiter: Option<UniquePtr<DiskJob>>,
    /// Chunks written to in this session: the store accounts a chunk whole from its
    /// first byte, so only a block that begins a chunk costs the cache bound.
    touched: HashSet<(TorrentId, u64)>,
}

struct Backpressure {
    state: Mutex<GateState>,
    /// Cost admitted and not yet stored (it is not in the storage's room yet).
    queued_cache: AtomicU64,
    queued_disk: AtomicU64,
    /// libtorrent is stopping, or the core is shut down: nothing is held any more.
    off: AtomicBool,
    /// Tells the monitor to stop.
    stop: Mutex<bool>,
    stop_cv: Condvar,
}

/// Jobs to complete once the gate lock is released.
struct Released {
    held: Vec<(UniquePtr<DiskJob>, TorrentId)>,
    waiter: Option<UniquePtr<DiskJob>>,
}

impl Released {
    fn complete(self, changed: &Mutex<HashSet<TorrentId>>) {
        let mut torrents = HashSet::new();
        for (job, t) in self.held {
            ffi::complete_job(job, ok(Vec::new()));
            torrents.insert(t);
        }
        if !torrents.is_empty() {
            lock(changed).extend(torrents);
        }
        if let Some(w) = self.waiter {
            ffi::complete_job(w, ok(Vec::new()));
        }
    }
}

impl Backpressure {
    fn new() -> Backpressure {
        Backpressure {
            state: Mutex::new(GateState {
                gate: Gate::new(Instant::now()),
                held: Vec::new(),
                waiter: None,
                touched: HashSet::new(),
            }),
            queued_cache: AtomicU64::new(0),
            queued_disk: AtomicU64::new(0),
            off: AtomicBool::new(false),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
        }
    }

    fn off(&self) -> bool {
        self.off.load(Ordering::Acquire)
    }

    /// A block of `len` bytes at `start` is being queued: its cost, and whether
    /// libtorrent must stop reading from peers.
    fn admit(&self, t: TorrentId, start: u64, len: u64) -> (Cost, bool) {
        let mut st = lock(&self.state);
        let mut cost = Cost {
            cache: 0,
            disk: len,
        };
        let last = (start + len.max(1) - 1) / CHUNK_LEN;
        for chunk in start / CHUNK_LEN..=last {
            if st.touched.insert((t, chunk)) {
                cost.cache += CHUNK_LEN;
            }
        }
        self.queued_cache.fetch_add(cost.cache, Ordering::AcqRel);
        self.queued_disk.fetch_add(cost.disk, Ordering::AcqRel);
        let was = st.gate.is_closed();
        let exceeded = !self.off() && st.gate.admit(cost);
        if exceeded && !was {
            tracing::trace!(admitted = ?st.gate.admitted(), "download backpressure: gate closed");
        }
        (cost, exceeded)
    }

    fn stored(&self, cost: Cost) {
        for (q, n) in [
            (&self.queued_cache, cost.cache),
            (&self.queued_disk, cost.disk),
        ] {
            let _ = q.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
        }
    }

    /// libtorrent let go of a torrent: forget which of its chunks were begun.
    fn forget(&self, t: TorrentId) {
        lock(&self.state).touched.retain(|(id, _)| *id != t);
    }

    /// Holds a stored block's completion while the gate is closed; gives it back otherwise.
    fn hold(&self, job: UniquePtr<DiskJob>, t: TorrentId) -> Option<UniquePtr<DiskJob>> {
        let mut st = lock(&self.state);
        if st.gate.is_closed() && !self.off() {
            st.held.push((job, t));
            None
        } else {
            Some(job)
        }
    }

    fn take_all(&self) -> Released {
        let mut st = lock(&self.state);
        Released {
            held: std::mem::take(&mut st.held),
            waiter: st.waiter.take(),
        }
    }

    /// Releases everything held and stops holding (libtorrent is stopping).
    fn disable(&self, changed: &Mutex<HashSet<TorrentId>>) {
        self.off.store(true, Ordering::Release);
        self.take_all().complete(changed);
    }

    /// One sample of the storage's room.
    fn sample(&self, storage: &dyn TorrentStorage, changed: &Mutex<HashSet<TorrentId>>) {
        // Queued first: a block stored in between is then counted twice, never missed.
        let queued = Cost {
            cache: self.queued_cache.load(Ordering::Acquire),
            disk: self.queued_disk.load(Ordering::Acquire),
        };
        // Ask for twice what the last interval took, so a throttled download can speed up.
        // and room for what a closing lets through besides.
        let (last, overshoot) = {
            let st = lock(&self.state);
            (st.gate.admitted().cache, st.gate.overshoot())
        };
        let want = last
            .saturating_mul(2)
            .max(MIN_WANT)
            .saturating_add(overshoot.cache.max(overshoot.disk));
        let room = storage.room(want);
        let (opened, closed) = {
            let mut st = lock(&self.state);
            let opened = st.gate.sample(room.as_ref(), queued, Instant::now());
            (opened, st.gate.is_closed())
        };
        if closed || opened {
            tracing::debug!(room = ?room, queued = ?queued, ?overshoot, opened, "download backpressure");
        }
        if opened {
            self.take_all().complete(changed);
        }
    }

    /// Samples every [`SAMPLE`] until stopped.
    fn monitor(&self, storage: &dyn TorrentStorage, changed: &Mutex<HashSet<TorrentId>>) {
        loop {
            let stop = lock(&self.stop);
            let (stop, _) = self
                .stop_cv
                .wait_timeout_while(stop, SAMPLE, |s| !*s)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *stop {
                return;
            }
            drop(stop);
            let r = catch_unwind(AssertUnwindSafe(|| self.sample(storage, changed)));
            if r.is_err() {
                tracing::error!("sampling the cache's room panicked; backpressure is off");
                self.disable(changed);
                return;
            }
        }
    }
}

/// Shared state of the disk subsystem; owned by the Rust `Session` and, through
/// [`DiskHandle`], by the C++ disk object.
pub(crate) struct DiskCore {
    storage: Arc<dyn TorrentStorage>,
    slots: Mutex<Vec<Option<Arc<Slot>>>>,
    prepared: Mutex<HashMap<TorrentId, Prepared>>,
    write_q: Arc<Queue>,
    hash_q: Arc<Queue>,
    read_q: Arc<Queue>,
    hint_q: Arc<Queue>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Set when libtorrent starts shutting down (`disk_interface::abort`).
    aborting: Arc<AtomicBool>,
    /// Torrents that stored a block since the last `take_changed`.
    changed: Arc<Mutex<HashSet<TorrentId>>>,
    bp: Arc<Backpressure>,
}

impl DiskCore {
    /// The session is stopping: nothing is held for room any more, and writes waiting
    /// for room on a full disk give up, so libtorrent's shutdown (which waits for its
    /// disk jobs) cannot wait on the disk forever.
    pub(crate) fn stop_holding(&self) {
        self.bp.disable(&self.changed);
    }

    pub(crate) fn start(storage: Arc<dyn TorrentStorage>) -> std::io::Result<Arc<DiskCore>> {
        let core = Arc::new(DiskCore {
            storage,
            slots: Mutex::new(Vec::new()),
            prepared: Mutex::new(HashMap::new()),
            write_q: Queue::new(),
            hash_q: Queue::new(),
            read_q: Queue::new(),
            hint_q: Queue::new(),
            workers: Mutex::new(Vec::new()),
            aborting: Arc::new(AtomicBool::new(false)),
            changed: Arc::new(Mutex::new(HashSet::new())),
            bp: Arc::new(Backpressure::new()),
        });
        {
            let (bp, storage, changed) = (
                Arc::clone(&core.bp),
                Arc::clone(&core.storage),
                Arc::clone(&core.changed),
            );
            let handle = std::thread::Builder::new()
                .name("bae-disk-room".into())
                .spawn(move || bp.monitor(storage.as_ref(), &changed))?;
            lock(&core.workers).push(handle);
        }
        let mut queues = vec![
            ("bae-disk-write", &core.write_q),
            ("bae-disk-hash", &core.hash_q),
            ("bae-disk-hint", &core.hint_q),
        ];
        queues.extend((0..READ_WORKERS).map(|_| ("bae-disk-read", &core.read_q)));
        for (name, queue) in queues {
            let queue = Arc::clone(queue);
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || queue.run());
            match handle {
                Ok(handle) => lock(&core.workers).push(handle),
                Err(e) => {
                    core.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(core)
    }

    pub(crate) fn storage(&self) -> &Arc<dyn TorrentStorage> {
        &self.storage
    }

    /// Records what the next storage libtorrent creates for `t` should know.
    pub(crate) fn prepare(&self, t: TorrentId, prepared: Prepared) {
        lock(&self.prepared).insert(t, prepared);
    }

    pub(crate) fn unprepare(&self, t: TorrentId) -> Option<Prepared> {
        lock(&self.prepared).remove(&t)
    }

    /// Torrents that stored a block since the last call. A write is counted only after
    /// its completion was posted to libtorrent, so resume data asked for afterwards
    /// includes that block.
    pub(crate) fn take_changed(&self) -> HashSet<TorrentId> {
        std::mem::take(&mut *lock(&self.changed))
    }

    /// Stops taking jobs, lets the workers finish what is queued, joins them. Idempotent.
    pub(crate) fn shutdown(&self) {
        self.bp.disable(&self.changed);
        *lock(&self.bp.stop) = true;
        self.bp.stop_cv.notify_all();
        for q in [&self.write_q, &self.hash_q, &self.read_q, &self.hint_q] {
            q.close();
        }
        let workers: Vec<_> = lock(&self.workers).drain(..).collect();
        for w in workers {
            if w.join().is_err() {
                tracing::error!("a disk worker panicked");
            }
        }
    }

    fn slot(&self, index: u32) -> Option<Arc<Slot>> {
        lock(&self.slots).get(index as usize).cloned().flatten()
    }
}

impl Drop for DiskCore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The handle C++ holds (as `rust::Box<DiskHandle>`) to call into the disk subsystem.
pub struct DiskHandle {
    core: Arc<DiskCore>,
}

impl DiskHandle {
    pub(crate) fn new(core: Arc<DiskCore>) -> Self {
        DiskHandle { core }
    }
}

fn ok(data: Vec<u8>) -> JobResult {
    JobResult {
        os_error: 0,
        op: DiskOp::Read,
        data,
        check: CheckStatus::Ok,
    }
}

fn failed(op: DiskOp, err: &StorageError) -> JobResult {
    let os_error = match err {
        StorageError::Io(_) | StorageError::Fetch(_) => libc::EIO,
        StorageError::NotFound => libc::ENOENT,
        StorageError::NoSpace => libc::ENOSPC,
    };
    JobResult {
        os_error,
        op,
        data: Vec::new(),
        check: CheckStatus::Fatal,
    }
}

fn invalid(op: DiskOp) -> JobResult {
    JobResult {
        os_error: libc::EINVAL,
        op,
        data: Vec::new(),
        check: CheckStatus::Fatal,
    }
}

/// Everything a task needs about its storage, checked at submit time.
struct Target {
    slot: Arc<Slot>,
    torrent: TorrentId,
    storage: Arc<dyn TorrentStorage>,
    aborting: Arc<AtomicBool>,
    changed: Arc<Mutex<HashSet<TorrentId>>>,
    bp: Arc<Backpressure>,
}

/// Completes a peer's read job with the bytes, or the error.
fn complete_read(
    job: UniquePtr<DiskJob>,
    t: TorrentId,
    (piece, offset): (u32, u32),
    r: Result<Vec<u8>, StorageError>,
) {
    match r {
        Ok(buf) => ffi::complete_job(job, ok(buf)),
        Err(e) => {
            tracing::warn!(torrent = %t, piece, offset, error = %e, "read failed");
            // libtorrent 2.0.8 answers a failed peer read by rejecting the request and
            // telling that peer it lacks the piece; the torrent goes on.
            ffi::complete_job(job, failed(DiskOp::Read, &e))
        }
    }
}

impl Target {
    /// `buf.len()` stream bytes at `start`, as stored or still queued for writing.
    fn read_into(&self, start: u64, mut buf: Vec<u8>) -> Result<Vec<u8>, StorageError> {
        self.slot.read_through(
            self.storage.as_ref(),
            (self.torrent, Purpose::Peer),
            start,
            &mut buf,
        )?;
        Ok(buf)
    }

    /// Reads and hashes queued when the session began shutting down are not run.
    fn aborted(&self) -> bool {
        self.aborting.load(Ordering::Acquire)
    }
}

impl DiskHandle {
    /// Resolves a storage index, or completes `job` with EINVAL and returns None.
    fn target(
        &self,
        index: u32,
        op: DiskOp,
        job: &mut Option<UniquePtr<DiskJob>>,
    ) -> Option<Target> {
        let slot = self.core.slot(index);
        match slot.as_ref().and_then(|s| s.torrent) {
            Some(torrent) => Some(Target {
                slot: slot?,
                torrent,
                storage: Arc::clone(&self.core.storage),
                aborting: Arc::clone(&self.core.aborting),
                changed: Arc::clone(&self.core.changed),
                bp: Arc::clone(&self.core.bp),
            }),
            None => {
                tracing::error!(index, "disk job for an unknown storage");
                if let Some(job) = job.take() {
                    ffi::complete_job(job, invalid(op));
                }
                None
            }
        }
    }

    pub fn open_storage(&self, index: u32, save_path: &str, layout: ffi::Layout) {
        let torrent = torrent_of_save_path(save_path);
        if torrent.is_none() {
            tracing::error!(save_path, "libtorrent opened a storage that is not bae's");
        }
        let prepared = torrent
            .and_then(|t| self.core.unprepare(t))
            .unwrap_or_default();
        let layout = layout_from_ffi(layout, prepared.info_hash_v1, prepared.info_hash_v2);
        let slot = Arc::new(Slot {
            torrent,
            layout,
            prepared,
            pending: Mutex::new(BTreeMap::new()),
            stored: Condvar::new(),
            waiting: AtomicUsize::new(0),
            next_seq: Mutex::new(0),
            last_hint: AtomicU64::new(0),
        });
        let mut slots = lock(&self.core.slots);
        let index = index as usize;
        if slots.len() <= index {
            slots.resize(index + 1, None);
        }
        slots[index] = Some(slot);
    }

    pub fn close_storage(&self, index: u32) {
        let slot = lock(&self.core.slots)
            .get_mut(index as usize)
            .and_then(Option::take);
        let Some(slot) = slot else { return };
        let Some(t) = slot.torrent else { return };
        self.core.bp.forget(t);
        let storage = Arc::clone(&self.core.storage);
        // Behind every write already queued for this storage.
        self.core.write_q.push(Box::new(move || storage.close(t)));
    }

    pub fn submit_read(
        &self,
        index: u32,
        piece: u32,
        offset: u32,
        len: u32,
        job: UniquePtr<DiskJob>,
    ) {
        let mut job = Some(job);
        let Some(target) = self.target(index, DiskOp::Read, &mut job) else {
            return;
        };
        let start = u64::from(piece) * target.slot.layout.piece_len + u64::from(offset);
        // Bytes at hand are answered here, on libtorrent's network thread: no hand-off to
        // a read worker and back (each a wake-up of a thread on another CPU), and no hint
        // (the chunk is local).
        // One buffer: a worker gets it when the bytes are not at hand.
        let mut buf = vec![0u8; len as usize];
        if !target.aborted() && start + u64::from(len) <= target.slot.layout.total_len {
            let r = target.slot.read_through_now(
                target.storage.as_ref(),
                target.torrent,
                start,
                &mut buf,
            );
            if let Some(r) = r {
                if let Some(job) = job {
                    complete_read(job, target.torrent, (piece, offset), r.map(|()| buf));
                }
                return;
            }
        }
        let chunk = start / CHUNK_LEN + 1;
        if target.slot.last_hint.swap(chunk, Ordering::Relaxed) != chunk {
            let (storage, aborting, t) = (
                Arc::clone(&target.storage),
                Arc::clone(&target.aborting),
                target.torrent,
            );
            self.core.hint_q.push(Box::new(move || {
                if !aborting.load(Ordering::Acquire) {
                    storage.will_read(t, start, u64::from(len));
                }
            }));
        }
        self.core.read_q.push(Box::new(move || {
            let Some(job) = job else { return };
            if target.aborted() {
                return drop(job); // completes as operation_aborted
            }
            if start + u64::from(len) > target.slot.layout.total_len {
                return ffi::complete_job(job, invalid(DiskOp::Read));
            }
            let r = target.read_into(start, buf);
            complete_read(job, target.torrent, (piece, offset), r);
        }));
    }

    /// Queues a block for writing. Returns whether libtorrent should stop reading from
    /// peers until it is told there is room (see the module comment).
    pub fn submit_write(
        &self,
        index: u32,
        piece: u32,
        offset: u32,
        data: &[u8],
        job: UniquePtr<DiskJob>,
    ) -> bool {
        let mut job = Some(job);
        let Some(target) = self.target(index, DiskOp::Write, &mut job) else {
            return false;
        };
        let start = u64::from(piece) * target.slot.layout.piece_len + u64::from(offset);
        if start + data.len() as u64 > target.slot.layout.total_len {
            if let Some(job) = job {
                ffi::complete_job(job, invalid(DiskOp::Write));
            }
            return false;
        }
        // libtorrent's buffer is only valid during this call: copy it now.
        let data: Arc<[u8]> = Arc::from(data);
        let seq = {
            let mut next = lock(&target.slot.next_seq);
            *next += 1;
            *next
        };
        lock(&target.slot.pending).insert(start, (seq, Arc::clone(&data)));
        let (cost, exceeded) = target.bp.admit(target.torrent, start, data.len() as u64);
        self.core.write_q.push(Box::new(move || {
            let result = store_retrying(&target, start, &data);
            {
                let mut pending = lock(&target.slot.pending);
                if pending.get(&start).is_some_and(|(s, _)| *s == seq) {
                    pending.remove(&start);
                }
                if target.slot.waiting.load(Ordering::Relaxed) > 0 {
                    target.slot.stored.notify_all();
                }
            }
            target.bp.stored(cost);
            let Some(job) = job else { return };
            match result {
                Ok(()) => {
                    if let Some(job) = target.bp.hold(job, target.torrent) {
                        ffi::complete_job(job, ok(Vec::new()));
                        lock(&target.changed).insert(target.torrent);
                    }
                }
                // The session stopped while the disk was full: the block was not kept,
                // which libtorrent learns as operation_aborted (it asks again later).
                Err(StorageError::NoSpace) => drop(job),
                Err(e) => {
                    tracing::warn!(torrent = %target.torrent, piece, offset, error = %e, "write failed");
                    ffi::complete_job(job, failed(DiskOp::Write, &e))
                }
            }
        }));
        exceeded
    }

    /// libtorrent asks to be told (by completing `job`) when there is room again.
    pub fn wait_for_room(&self, job: UniquePtr<DiskJob>) {
        let bp = &self.core.bp;
        let old = {
            let mut st = lock(&bp.state);
            if !st.gate.is_closed() || bp.off() {
                Some(job)
            } else {
                st.waiter.replace(job)
            }
        };
        if let Some(job) = old {
            ffi::complete_job(job, ok(Vec::new()));
        }
    }

    pub fn submit_hash(
        &self,
        index: u32,
        piece: u32,
        v1: bool,
        v2_blocks: u32,
        job: UniquePtr<DiskJob>,
    ) {
        let mut job = Some(job);
        let Some(target) = self.target(index, DiskOp::Read, &mut job) else {
            return;
        };
        self.core.hash_q.push(Box::new(move || {
            let Some(job) = job else { return };
            if target.aborted() {
                return drop(job); // completes as operation_aborted
            }
            let layout = &target.slot.layout;
            let piece = PieceIndex(piece);
            let size_v1 = layout.piece_size(piece);
            let size_v2 = if v2_blocks > 0 { layout.piece_size_v2(piece) } else { 0 };
            let read_len = if v1 { size_v1 } else { size_v2.min(size_v1) };
            let start = u64::from(piece.0) * layout.piece_len;
            target.slot.wait_for_writes(start, read_len);
            match target.hash(start, read_len, v1, size_v2, v2_blocks) {
                Ok(hashes) => ffi::complete_job(job, ok(hashes)),
                Err(e) => {
                    tracing::warn!(torrent = %target.torrent, piece = piece.0, error = %e, "hash read failed");
                    ffi::complete_job(job, failed(DiskOp::Read, &e))
                }
            }
        }));
    }

    pub fn submit_hash2(&self, index: u32, piece: u32, offset: u32, job: UniquePtr<DiskJob>) {
        let mut job = Some(job);
        let Some(target) = self.target(index, DiskOp::Read, &mut job) else {
            return;
        };
        self.core.hash_q.push(Box::new(move || {
            let Some(job) = job else { return };
            if target.aborted() {
                return drop(job); // completes as operation_aborted
            }
            let layout = &target.slot.layout;
            let size_v2 = layout.piece_size_v2(PieceIndex(piece));
            let offset = u64::from(offset);
            if offset >= size_v2 {
                return ffi::complete_job(job, invalid(DiskOp::Read));
            }
            let len = (size_v2 - offset).min(BLOCK_LEN);
            let start = u64::from(piece) * layout.piece_len + offset;
            target.slot.wait_for_writes(start, len);
            match target.hash(start, len, false, len, 1) {
                Ok(hashes) => ffi::complete_job(job, ok(hashes[20..].to_vec())),
                Err(e) => ffi::complete_job(job, failed(DiskOp::Read, &e)),
            }
        }));
    }

    pub fn submit_check(&self, index: u32, job: UniquePtr<DiskJob>) {
        let mut job = Some(job);
        let Some(target) = self.target(index, DiskOp::Check, &mut job) else {
            return;
        };
        self.core.write_q.push(Box::new(move || {
            let Some(job) = job else { return };
            let prepared = &target.slot.prepared;
            let mut result = ok(Vec::new());
            result.op = DiskOp::Check;
            if prepared.opened {
                // The have-pieces given at add time came from the store.
                if prepared.full_check {
                    result.check = CheckStatus::NeedFullCheck;
                }
                return ffi::complete_job(job, result);
            }
            // A magnet whose metadata just arrived: the store learns the layout now.
            match target.storage.open(target.torrent, &target.slot.layout) {
                Ok(have) => {
                    if prepared.full_check || have.iter().any(|&h| h) {
                        // libtorrent was not told about these pieces: let it hash them once.
                        result.check = CheckStatus::NeedFullCheck;
                    }
                    ffi::complete_job(job, result)
                }
                Err(e) => {
                    tracing::error!(torrent = %target.torrent, error = %e, "opening the storage failed");
                    ffi::complete_job(job, failed(DiskOp::Check, &e))
                }
            }
        }));
    }

    pub fn submit_clear_piece(&self, index: u32, piece: u32, job: UniquePtr<DiskJob>) {
        let mut job = Some(job);
        let Some(target) = self.target(index, DiskOp::Write, &mut job) else {
            return;
        };
        // Queued behind the piece's writes, so the store hears of the failure before any
        // block of the piece is written again.
        self.core.write_q.push(Box::new(move || {
            let Some(job) = job else { return };
            target
                .storage
                .piece_failed(target.torrent, PieceIndex(piece));
            ffi::complete_job(job, ok(Vec::new()));
        }));
    }

    pub fn submit_flush(&self, index: u32, job: UniquePtr<DiskJob>) {
        // A barrier: completes once every write queued before it is stored — and
        // completed, so held completions go first. Also used for storages that are gone
        // (nothing left to flush).
        let (bp, changed) = (Arc::clone(&self.core.bp), Arc::clone(&self.core.changed));
        self.core.write_q.push(Box::new(move || {
            let _ = index;
            let released = bp.take_all();
            released.complete(&changed);
            ffi::complete_job(job, ok(Vec::new()));
        }));
    }

    pub fn abort(&self) {
        self.core.aborting.store(true, Ordering::Release);
        self.core.bp.disable(&self.core.changed);
    }

    pub fn shutdown(&self) {
        self.core.shutdown();
    }
}

/// Stores a block; a full disk is waited out (retried) rather than reported, so that a
/// piece is never lost to ENOSPC. Gives up only when the session stops.
fn store_retrying(target: &Target, start: u64, data: &[u8]) -> Result<(), StorageError> {
    let mut since: Option<Instant> = None;
    loop {
        match target.storage.write(target.torrent, start, data) {
            Err(StorageError::NoSpace) if !target.bp.off() && !target.aborted() => {
                if since.is_none() {
                    tracing::warn!(torrent = %target.torrent, "the cache's disk is full (or at its free-space reserve); the write waits for room");
                    since = Some(Instant::now());
                }
                std::thread::sleep(NO_SPACE_RETRY);
            }
            r => {
                if let (Some(t), Ok(())) = (since, &r) {
                    tracing::info!(torrent = %target.torrent, waited_ms = t.elapsed().as_millis() as u64, "room again: the write went through");
                }
                return r;
            }
        }
    }
}

/// The answer to libtorrent's `async_hash`: 20 bytes of SHA-1 over `piece` (zeros if
/// `v1` is false), then one SHA-256 per 16 KiB block of the piece's first `size_v2`
/// bytes (the last block may be short), at most `v2_blocks` of them.
#[cfg(test)]
fn piece_hashes(piece: &[u8], v1: bool, size_v2: u64, v2_blocks: u32) -> Vec<u8> {
    let mut h = PieceHasher::new(v1, size_v2, v2_blocks);
    h.update(piece);
    h.finish()
}

/// Bytes of a piece read and hashed at a time: they are hashed while still in the CPU's
/// cache, and no buffer the size of a piece is allocated and zeroed for each.
const HASH_SLICE: usize = 256 * 1024;

thread_local! {
    static HASH_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`piece_hashes`] over a piece fed in slices (each a whole number of blocks, but the
/// last).
struct PieceHasher {
    sha1: Option<Sha1>,
    size_v2: u64,
    v2_left: u32,
    at: u64,
    out: Vec<u8>,
}

impl PieceHasher {
    fn new(v1: bool, size_v2: u64, v2_blocks: u32) -> PieceHasher {
        let mut out = Vec::with_capacity(20 + 32 * v2_blocks as usize);
        out.extend_from_slice(&[0u8; 20]);
        PieceHasher {
            sha1: v1.then(Sha1::new),
            size_v2,
            v2_left: v2_blocks,
            at: 0,
            out,
        }
    }

    fn update(&mut self, slice: &[u8]) {
        if let Some(h) = &mut self.sha1 {
            h.update(slice);
        }
        let v2_end = self.size_v2.saturating_sub(self.at).min(slice.len() as u64) as usize;
        for block in slice[..v2_end].chunks(BLOCK_LEN as usize) {
            if self.v2_left == 0 {
                break;
            }
            self.v2_left -= 1;
            self.out.extend_from_slice(&Sha256::digest(block));
        }
        self.at += slice.len() as u64;
    }

    fn finish(mut self) -> Vec<u8> {
        if let Some(h) = self.sha1 {
            self.out[..20].copy_from_slice(&h.finalize());
        }
        self.out
    }
}

impl Target {
    /// Reads `len` stream bytes at `start` and hashes them for `async_hash`, a slice at a
    /// time into this thread's buffer.
    fn hash(
        &self,
        start: u64,
        len: u64,
        v1: bool,
        size_v2: u64,
        v2_blocks: u32,
    ) -> Result<Vec<u8>, StorageError> {
        let mut h = PieceHasher::new(v1, size_v2, v2_blocks);
        HASH_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize(HASH_SLICE, 0);
            let mut at = 0;
            while at < len {
                let n = (len - at).min(HASH_SLICE as u64) as usize;
                self.slot.read_through(
                    self.storage.as_ref(),
                    (self.torrent, Purpose::Check),
                    start + at,
                    &mut buf[..n],
                )?;
                h.update(&buf[..n]);
                at += n as u64;
            }
            Ok(h.finish())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A storage holding one stream in memory.
    struct MemStorage(Mutex<Vec<u8>>);

    impl TorrentStorage for MemStorage {
        fn open(&self, _: TorrentId, _: &TorrentLayout) -> Result<Vec<bool>, StorageError> {
            Ok(Vec::new())
        }
        fn write(&self, _: TorrentId, at: u64, data: &[u8]) -> Result<(), StorageError> {
            lock(&self.0)[at as usize..at as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn read(&self, _: TorrentId, at: u64, buf: &mut [u8]) -> Result<(), StorageError> {
            buf.copy_from_slice(&lock(&self.0)[at as usize..at as usize + buf.len()]);
            Ok(())
        }
        fn pieces_verified(&self, _: TorrentId, _: &[PieceIndex]) {}
        fn piece_failed(&self, _: TorrentId, _: PieceIndex) {}
        fn close(&self, _: TorrentId) {}
    }

    #[test]
    fn reads_see_pending_writes_over_stored_bytes() {
        let storage = MemStorage(Mutex::new(vec![1u8; 4 * BLOCK_LEN as usize]));
        let slot = Slot {
            torrent: Some(TorrentId(1)),
            layout: TorrentLayout {
                piece_len: 2 * BLOCK_LEN,
                total_len: 4 * BLOCK_LEN,
                files: Vec::new(),
                info_hash_v1: None,
                info_hash_v2: None,
            },
            prepared: Prepared::default(),
            pending: Mutex::new(BTreeMap::new()),
            stored: Condvar::new(),
            waiting: AtomicUsize::new(0),
            next_seq: Mutex::new(0),
            last_hint: AtomicU64::new(0),
        };
        let block = |v: u8| -> Arc<[u8]> { Arc::from(vec![v; BLOCK_LEN as usize]) };
        lock(&slot.pending).insert(BLOCK_LEN, (1, block(2)));
        lock(&slot.pending).insert(3 * BLOCK_LEN, (2, block(3)));
        // A read straddling stored, pending and stored bytes, starting mid-block.
        let start = BLOCK_LEN / 2;
        let mut buf = vec![0u8; 2 * BLOCK_LEN as usize];
        slot.read_through(&storage, (TorrentId(1), Purpose::Peer), start, &mut buf)
            .unwrap();
        let half = BLOCK_LEN as usize / 2;
        assert!(buf[..half].iter().all(|&b| b == 1));
        assert!(buf[half..half + BLOCK_LEN as usize].iter().all(|&b| b == 2));
        assert!(buf[half + BLOCK_LEN as usize..].iter().all(|&b| b == 1));
        // A read inside the last pending block only.
        let mut buf = vec![0u8; 100];
        slot.read_through(
            &storage,
            (TorrentId(1), Purpose::Peer),
            3 * BLOCK_LEN + 7,
            &mut buf,
        )
        .unwrap();
        assert!(buf.iter().all(|&b| b == 3));
    }

    #[test]
    fn save_path_round_trips_the_torrent_id() {
        let t = TorrentId(42);
        assert_eq!(torrent_of_save_path(&save_path_for(t)), Some(t));
        assert_eq!(torrent_of_save_path("/home/x"), None);
        assert_eq!(torrent_of_save_path("/bae-torrent:x"), None);
        assert_eq!(
            torrent_of_save_path("/cwd/bae-torrent:3"),
            Some(TorrentId(3))
        );
    }

    #[test]
    fn piece_hashes_cover_v1_and_short_v2_blocks() {
        let piece: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let out = piece_hashes(&piece, true, 36_000, 4);
        assert_eq!(&out[..20], Sha1::digest(&piece).as_slice());
        // 36 000 bytes: two full blocks and one of 3 232 bytes.
        assert_eq!(out.len(), 20 + 3 * 32);
        assert_eq!(
            &out[20 + 64..],
            Sha256::digest(&piece[32_768..36_000]).as_slice()
        );
        let v2_only = piece_hashes(&piece[..16_384], false, 16_384, 2);
        assert_eq!(&v2_only[..20], &[0u8; 20]);
        assert_eq!(v2_only.len(), 20 + 32);
        // Fed in slices of whole blocks, the hashes are the same.
        let big: Vec<u8> = (0..(3 * HASH_SLICE + 20_000) as u32)
            .map(|i| (i / 7) as u8)
            .collect();
        let whole = piece_hashes(&big, true, 2 * HASH_SLICE as u64 + 5_000, 40);
        let mut h = PieceHasher::new(true, 2 * HASH_SLICE as u64 + 5_000, 40);
        for slice in big.chunks(HASH_SLICE) {
            h.update(slice);
        }
        assert_eq!(h.finish(), whole);
        assert_eq!(&whole[..20], Sha1::digest(&big).as_slice());
        assert_eq!(
            whole.len(),
            20 + 33 * 32,
            "the v2 blocks of the first 2.02 slices"
        );
    }
}
