//! What the mount reads: the chunk store, with libtorrent behind it for pieces not
//! downloaded yet.
//!
//! A read of verified bytes is served from the cache or fetched from the remote by the
//! store. A read that touches unverified pieces asks libtorrent for them with piece
//! deadlines (streaming; top priority while the download is fast) and waits — bounded
//! by the configured read timeout — for the store to report them verified.
//!
//! The set of torrents reaches the mount as events ([`ContentEvent`]): the daemon says
//! which torrent changed ([`StoreContent::torrent_changed`], [`StoreContent::sync`],
//! [`StoreContent::torrent_removed`]) and only that torrent's entry is read from the
//! catalog, once, off the FUSE threads. `events` orders replay and changes (see
//! [`Content::subscribe`]); it is taken before any lock of the mount and never inside
//! a store call.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::catalog::{Catalog, CatalogError, TorrentRecord};
use crate::fs::{
    Content, ContentError, ContentEvent, ContentSink, FileEntry, Progress, Subscribers,
    TorrentEntry,
};
use crate::model::{ChunkKey, PieceIndex, TorrentId, CHUNK_LEN};
use crate::store::{FetchError, Store, StoreError, Wanted};
use crate::torrent::Session;

pub struct StoreContent {
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    session: OnceLock<Weak<Session>>,
    read_timeout: Duration,
    events: Mutex<Events>,
    rates: Mutex<lru::LruCache<TorrentId, RateSample>>,
    /// Told which pieces a reader raised, so that it does not lower them.
    chunk_order: Arc<super::chunk_order::ChunkOrder>,
}

/// Where a torrent's download rate was last measured (see
/// [`StoreContent::download_rate`]).
#[derive(Clone, Copy, Debug)]
struct RateSample {
    at: Instant,
    bytes: u64,
    bps: u64,
}

impl RateSample {
    /// The rate with `bytes` verified by `now`: measured afresh once [`RATE_SAMPLE`]
    /// has passed since the last measure, else the last one.
    fn update(&mut self, now: Instant, bytes: u64) -> u64 {
        let dt = now.saturating_duration_since(self.at);
        if dt >= RATE_SAMPLE {
            self.bps = (bytes.saturating_sub(self.bytes) as f64 / dt.as_secs_f64()) as u64;
            self.at = now;
            self.bytes = bytes;
        }
        self.bps
    }
}

/// What the mount has been told.
#[derive(Default)]
struct Events {
    sinks: Subscribers,
    /// Torrents announced as shown, with a [`name_tag`] of the name they were announced
    /// under (a tag, not the name: this map has an entry per torrent of the library).
    shown: HashMap<TorrentId, u64>,
}

/// A 64-bit hash of a torrent's name, to tell a rename from the name already shown.
fn name_tag(name: &str) -> u64 {
    let d = blake3::hash(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Deadline libtorrent gets for a piece a reader is waiting on right now.
const URGENT_DEADLINE_MS: u32 = 500;
/// How long a read waits for its pieces before it asks for them (with
/// [`URGENT_DEADLINE_MS`], or top priority: see [`FAST_DOWNLOAD_BPS`]). On a fast link
/// what is missing is already on its way (and the read-ahead asked for it): a player
/// reading an album as it downloaded at 300 MB/s slowed the download by a fifth when
/// every waiting read set deadlines on pieces in flight. On a slow link this is small
/// beside one piece's time.
const URGENT_AFTER: Duration = Duration::from_millis(50);
/// A torrent downloading at least this fast gets a reader's pieces asked for with top
/// priority rather than deadlines. libtorrent cancels every request outstanding to its
/// peers when a torrent's first deadline is set (and deadlines come and go as a player
/// follows a download), while its queue to a peer holds at most 500 blocks of 16 KiB:
/// at this rate that queue empties within 100 ms, after which top-priority pieces come
/// first. A player reading an album as it downloaded at ~300 MB/s slowed the download
/// by a fifth with deadlines, and not measurably with priorities (alternated runs, 256 KiB
/// and 4 MiB pieces); a slow link, where the queue holds seconds, keeps deadlines.
const FAST_DOWNLOAD_BPS: u64 = 84_000_000;
/// How long a read still waiting asks with deadlines even on a fast download: its
/// pieces may be with a slow peer of a swarm, which only deadlines take them from.
const DEADLINE_AFTER: Duration = Duration::from_millis(500);
/// libtorrent's top piece priority (what deadlines set too).
const TOP_PRIORITY: u8 = 7;
/// Shortest span a download rate is measured over.
const RATE_SAMPLE: Duration = Duration::from_millis(100);
/// Torrents whose rate is followed (those being read while they download).
const RATES_KEPT: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(64) {
    Some(n) => n,
    None => unreachable!(),
};
/// The least a read joining a running remote fetch waits for it.
const JOIN_GRACE: Duration = Duration::from_millis(250);
/// Deadline for pieces wanted by read-ahead.
const READAHEAD_DEADLINE_MS: u32 = 3_000;

impl StoreContent {
    pub fn new(
        store: Arc<Store>,
        catalog: Arc<Catalog>,
        read_timeout: Duration,
        chunk_order: Arc<super::chunk_order::ChunkOrder>,
    ) -> Self {
        StoreContent {
            store,
            catalog,
            session: OnceLock::new(),
            read_timeout,
            events: Mutex::new(Events::default()),
            rates: Mutex::new(lru::LruCache::new(RATES_KEPT)),
            chunk_order,
        }
    }

    pub fn set_session(&self, session: &Arc<Session>) {
        let _ = self.session.set(Arc::downgrade(session));
    }

    fn events(&self) -> std::sync::MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Torrent `t` was added, got its layout or metadata, or was renamed: its entry is
    /// read from the catalog and passed to the mount (which ignores an unchanged one).
    pub fn torrent_changed(&self, t: TorrentId) {
        let mut ev = self.events();
        let record = match self.catalog.torrent(t) {
            Ok(r) => Some(r),
            Err(CatalogError::UnknownTorrent(_)) => None,
            Err(e) => {
                tracing::warn!(torrent = %t, error = %e, "cannot read the torrent for the mount");
                return;
            }
        };
        match record.filter(|r| r.geometry.is_some()) {
            Some(r) => self.announce(&mut ev, &r),
            None => {
                ev.shown.remove(&t);
                ev.sinks.publish(ContentEvent::Removed(t));
            }
        }
    }

    /// Torrent `t` is gone from the library.
    pub fn torrent_removed(&self, t: TorrentId) {
        let mut ev = self.events();
        ev.shown.remove(&t);
        ev.sinks.publish(ContentEvent::Removed(t));
    }

    /// The catalog now holds `torrents`: announces the ones the mount was not told
    /// about (or under another name) and withdraws the ones that are gone. Memory work
    /// plus one catalog read per announced torrent.
    pub fn sync(&self, torrents: &[TorrentRecord]) {
        let mut ev = self.events();
        let mut present = HashSet::with_capacity(torrents.len());
        for r in torrents.iter().filter(|r| r.geometry.is_some()) {
            present.insert(r.id);
            self.announce_if_changed(&mut ev, r);
        }
        let gone: Vec<TorrentId> = ev
            .shown
            .keys()
            .filter(|t| !present.contains(t))
            .copied()
            .collect();
        for t in gone {
            ev.shown.remove(&t);
            ev.sinks.publish(ContentEvent::Removed(t));
        }
    }

    /// [`StoreContent::sync`] for one torrent that is in the catalog: announced when new
    /// or renamed (or once its layout is known).
    pub fn refresh(&self, r: &TorrentRecord) {
        if r.geometry.is_some() {
            self.announce_if_changed(&mut self.events(), r);
        }
    }

    /// Announces `r` unless the mount already shows it under this name.
    fn announce_if_changed(&self, ev: &mut Events, r: &TorrentRecord) {
        if ev.shown.get(&r.id) != Some(&name_tag(&r.name)) {
            self.announce(ev, r);
        }
    }

    fn announce(&self, ev: &mut Events, r: &TorrentRecord) {
        match self.entry_of(r) {
            Ok(entry) => {
                ev.shown.insert(r.id, name_tag(&r.name));
                ev.sinks.publish(ContentEvent::Upsert(entry));
            }
            Err(e) => tracing::warn!(torrent = %r.id, error = %e, "cannot list files"),
        }
    }

    /// The mount's view of one torrent (with a layout).
    fn entry_of(&self, r: &TorrentRecord) -> Result<TorrentEntry, CatalogError> {
        let files = self.catalog.files(r.id)?;
        Ok(TorrentEntry {
            id: r.id,
            name: r.name.clone(),
            added_at: r.added_at,
            info_hash: r.info_hash_hex(),
            files: files
                .into_iter()
                .map(|f| FileEntry {
                    path: f.path,
                    stream_offset: f.stream_offset,
                    len: f.len,
                    pad: f.pad,
                    mtime: f.mtime,
                })
                .collect(),
        })
    }

    /// Asks libtorrent for `pieces` of `t` first: with deadlines from `deadline_ms` on,
    /// or, while `t` downloads faster than [`FAST_DOWNLOAD_BPS`] and the asker is not
    /// `late`, with top priority alone (see there). Whether deadlines were set.
    fn want_pieces(
        &self,
        t: TorrentId,
        pieces: &[PieceIndex],
        deadline_ms: u32,
        late: bool,
    ) -> bool {
        let Some(session) = self.session.get().and_then(Weak::upgrade) else {
            return false;
        };
        if !late && self.download_rate(t) >= FAST_DOWNLOAD_BPS {
            self.chunk_order.claim(t, pieces);
            for p in pieces {
                if let Err(e) = session.set_piece_priority(t, *p, TOP_PRIORITY) {
                    tracing::debug!(torrent = %t, piece = p.0, error = %e, "could not raise a piece");
                    break;
                }
            }
            return false;
        }
        for (i, p) in pieces.iter().enumerate() {
            // Stagger deadlines so libtorrent fetches them in reading order.
            let d = deadline_ms.saturating_add(i as u32 * 50);
            if let Err(e) = session.set_piece_deadline(t, *p, d) {
                tracing::debug!(torrent = %t, piece = p.0, error = %e, "could not set piece deadline");
                break;
            }
        }
        true
    }

    /// Verified bytes a second of torrent `t`, measured over the last
    /// [`RATE_SAMPLE`] or more (0 until then).
    fn download_rate(&self, t: TorrentId) -> u64 {
        let Some(bytes) = self.store.torrent_stats(t).map(|s| s.bytes_verified) else {
            return 0;
        };
        let now = Instant::now();
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        match rates.get_mut(&t) {
            Some(r) => r.update(now, bytes),
            None => {
                rates.put(
                    t,
                    RateSample {
                        at: now,
                        bytes,
                        bps: 0,
                    },
                );
                0
            }
        }
    }

    /// When a read must give up: the configured timeout, counted from when the remote
    /// fetch it joins began if that fetch is younger than the timeout. Read-ahead starts
    /// the fetch of the next chunk when a reader starts on this one, and the kernel's
    /// request for it comes only once this one arrived; counted from that request, a
    /// read spanning two chunks behind a failing remote would wait twice. A fetch older
    /// than the timeout was already given up on by its readers: a new read gets its own
    /// full wait.
    fn read_deadline(&self, t: TorrentId, range: &Range<u64>) -> tokio::time::Instant {
        let since = self.store.fetching_since(t, range.clone());
        tokio::time::Instant::from_std(read_deadline(Instant::now(), since, self.read_timeout))
    }

    /// Asks for the pieces of `range` not downloaded yet (with `swarm`) and brings its
    /// evicted chunks back from the remote (see [`Store::prefetch_chunk`] for `next`).
    fn prefetch_chunks(&self, t: TorrentId, range: Range<u64>, next: bool, swarm: bool) {
        let missing = match self.store.missing_pieces(t, range.clone()) {
            Ok(m) => m,
            Err(_) => return,
        };
        if swarm && !missing.is_empty() {
            // What is read next (a file's head, on open) is asked for as if its reader
            // already waited: libtorrent requests by deadline, and a head queued behind
            // the tail's pieces asked for at the same moment comes a link's queue later.
            let deadline = if next {
                URGENT_DEADLINE_MS
            } else {
                READAHEAD_DEADLINE_MS
            };
            let _ = self.want_pieces(t, &missing, deadline, false);
        }
        // Verified chunks that were evicted come back from the remote in parallel,
        // their fetches started in order. Only the chunk holding the range's first byte
        // is read next: a file's head that spills into a second chunk must not share
        // the disk, the link and the cores with it.
        let first = range.start / CHUNK_LEN;
        let last = range.end.saturating_sub(1) / CHUNK_LEN;
        for c in first..=last {
            let key = ChunkKey::new(t, c as u32);
            let wanted = if next && c == first {
                Wanted::Next
            } else {
                Wanted::Ahead
            };
            match self.store.prefetch_chunk(key, wanted) {
                Ok(Some(fetch)) => {
                    self.store.runtime().spawn(async move {
                        if let Err(e) = fetch.await {
                            tracing::debug!(chunk = %key, error = %e, "prefetch failed");
                        }
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(chunk = %key, error = %e, "prefetch failed"),
            }
        }
    }

    async fn read_waiting(&self, t: TorrentId, range: Range<u64>) -> Result<Bytes, ContentError> {
        let mut verified = self.store.watch_verified();
        let mut asked = Asked::Not;
        let mut waited: Option<Instant> = None;
        loop {
            verified.borrow_and_update();
            match self.store.read_verified(t, range.clone()).await {
                Ok(b) => {
                    if let Some(since) = waited {
                        tracing::debug!(torrent = %t, ?range, waited_ms = since.elapsed().as_millis() as u64, "read's pieces arrived");
                    }
                    return Ok(b);
                }
                Err(StoreError::NotVerified { missing, .. }) => {
                    let since = *waited.get_or_insert_with(|| {
                        tracing::debug!(torrent = %t, ?range, pieces = ?missing, "read waits for pieces");
                        super::metrics::read_waited_for_pieces();
                        Instant::now()
                    });
                    let (ask, nap) = wait_step(since.elapsed(), asked);
                    if ask != Asked::Not {
                        // Asked with deadlines already (a slow download): asking again
                        // soon would only move them later.
                        let deadlines =
                            self.want_pieces(t, &missing, URGENT_DEADLINE_MS, ask == Asked::Late);
                        asked = if deadlines { Asked::Late } else { ask };
                    }
                    // Woken sooner by any verification. Deadlines asked for
                    // [`ASK_AGAIN`] ago with nothing verified since are stale: asked
                    // for again.
                    if tokio::time::timeout(nap, verified.changed()).await.is_err()
                        && asked == Asked::Late
                    {
                        asked = Asked::Soon;
                    }
                }
                Err(e) => return Err(content_err(e)),
            }
        }
    }
}

/// How often a read still waiting asks for its pieces again: libtorrent drops deadlines
/// when a torrent is paused or restarted.
const ASK_AGAIN: Duration = Duration::from_secs(5);

/// How far a waiting read has asked for its pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    Not,
    /// After [`URGENT_AFTER`]: top priority on a fast download, else deadlines.
    Soon,
    /// After [`DEADLINE_AFTER`]: deadlines in any case.
    Late,
}

/// A read waiting `waiting` for its pieces, having `asked` so far: what to ask for now
/// ([`Asked::Not`]: nothing), and how long to sleep before looking again.
fn wait_step(waiting: Duration, asked: Asked) -> (Asked, Duration) {
    let until = |t: Duration| t.saturating_sub(waiting);
    match asked {
        Asked::Late => (Asked::Not, ASK_AGAIN),
        Asked::Not if waiting < URGENT_AFTER => (Asked::Not, until(URGENT_AFTER)),
        Asked::Not if waiting < DEADLINE_AFTER => (Asked::Soon, until(DEADLINE_AFTER)),
        Asked::Soon if waiting < DEADLINE_AFTER => (Asked::Not, until(DEADLINE_AFTER)),
        Asked::Not | Asked::Soon => (Asked::Late, ASK_AGAIN),
    }
}

/// See [`StoreContent::read_deadline`]: `fetch_since` is when the oldest fetch the read
/// joins began.
fn read_deadline(now: Instant, fetch_since: Option<Instant>, timeout: Duration) -> Instant {
    let own = now + timeout;
    match fetch_since {
        Some(since) if now.duration_since(since) < timeout => {
            (since + timeout).max(now + JOIN_GRACE).min(own)
        }
        _ => own,
    }
}

fn content_err(e: StoreError) -> ContentError {
    match e {
        StoreError::UnknownTorrent(_) | StoreError::OutOfRange { .. } => ContentError::NotFound,
        StoreError::Fetch {
            error: FetchError::Integrity(m),
            key,
        } => ContentError::Integrity(format!("chunk {key}: {m}")),
        other => ContentError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl Content for StoreContent {
    fn subscribe(&self, sink: Arc<dyn ContentSink>) {
        let mut ev = self.events();
        let torrents = self.catalog.torrents().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list torrents for the mount");
            Vec::new()
        });
        let mut shown = HashMap::with_capacity(torrents.len());
        // In id order (the catalog lists them so), each entry built as it is replayed.
        let entries = torrents
            .iter()
            .filter(|r| r.geometry.is_some())
            .filter_map(|r| match self.entry_of(r) {
                Ok(e) => {
                    shown.insert(r.id, name_tag(&r.name));
                    Some(e)
                }
                Err(e) => {
                    tracing::warn!(torrent = %r.id, error = %e, "cannot list files");
                    None
                }
            });
        ev.sinks.subscribe(sink, entries);
        ev.shown = shown;
    }

    async fn read(&self, t: TorrentId, range: Range<u64>) -> Result<Bytes, ContentError> {
        let deadline = self.read_deadline(t, &range);
        match tokio::time::timeout_at(deadline, self.read_waiting(t, range.clone())).await {
            Ok(r) => {
                if let Err(e) = &r {
                    tracing::warn!(torrent = %t, start = range.start, end = range.end, error = %e, "read failed");
                }
                r
            }
            Err(_) => {
                tracing::warn!(torrent = %t, start = range.start, end = range.end, "read timed out");
                Err(ContentError::Timeout)
            }
        }
    }

    fn prefetch(&self, t: TorrentId, range: Range<u64>) {
        self.prefetch_chunks(t, range, false, true);
    }

    fn prefetch_stored(&self, t: TorrentId, range: Range<u64>) {
        // Pieces asked for with a deadline all get libtorrent's top priority, and its
        // picker takes those in random order: a tail asked for on open came before the
        // head the reader waits on (0.55 s instead of 0.15 s over a 4 MB/s link).
        self.prefetch_chunks(t, range, false, false);
    }

    fn prefetch_next(&self, t: TorrentId, range: Range<u64>) {
        self.prefetch_chunks(t, range, true, true);
    }

    fn readable_now(&self, t: TorrentId, range: Range<u64>) -> bool {
        self.store.readable_now(t, range)
    }

    fn stream_len(&self, t: TorrentId) -> Option<u64> {
        Some(self.store.geometry(t)?.total_len())
    }

    fn progress(&self, t: TorrentId) -> Option<Progress> {
        let total_bytes = self.store.geometry(t)?.total_len();
        let s = self.store.torrent_stats(t)?;
        Some(Progress {
            total_bytes,
            verified_bytes: s.bytes_verified,
            // Every chunk is CHUNK_LEN but the last: capped at the stream's length.
            cached_bytes: (u64::from(s.chunks_local) * CHUNK_LEN).min(total_bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn a_read_joining_a_young_fetch_shares_its_deadline() {
        let t0 = Instant::now();
        // No fetch, or one that just began: the read's own timeout.
        assert_eq!(read_deadline(t0, None, TIMEOUT), t0 + TIMEOUT);
        assert_eq!(read_deadline(t0, Some(t0), TIMEOUT), t0 + TIMEOUT);
        // Read-ahead started the fetch 4 s before the kernel asked: 1 s left, not 5.
        let now = t0 + Duration::from_secs(4);
        assert_eq!(read_deadline(now, Some(t0), TIMEOUT), t0 + TIMEOUT);
        // Almost due: still the grace, so a fetch about to land is not refused.
        let now = t0 + Duration::from_millis(4_900);
        assert_eq!(read_deadline(now, Some(t0), TIMEOUT), now + JOIN_GRACE);
    }

    #[test]
    fn a_waiting_read_asks_for_its_pieces_only_once_they_are_late() {
        let ms = Duration::from_millis;
        // Just begun: pieces in flight may land any moment; look again when due.
        assert_eq!(wait_step(ms(0), Asked::Not), (Asked::Not, URGENT_AFTER));
        assert_eq!(
            wait_step(ms(30), Asked::Not),
            (Asked::Not, URGENT_AFTER - ms(30))
        );
        // Late: asked for (priority or deadlines, by the download's rate), then with
        // deadlines in any case once later still.
        assert_eq!(
            wait_step(URGENT_AFTER, Asked::Not),
            (Asked::Soon, DEADLINE_AFTER - URGENT_AFTER)
        );
        assert_eq!(
            wait_step(ms(400), Asked::Soon),
            (Asked::Not, DEADLINE_AFTER - ms(400))
        );
        assert_eq!(
            wait_step(DEADLINE_AFTER, Asked::Soon),
            (Asked::Late, ASK_AGAIN)
        );
        // Woken before it was due (another piece verified): asks what is due at once.
        assert_eq!(wait_step(ms(700), Asked::Not), (Asked::Late, ASK_AGAIN));
        // Asked with deadlines: again only every few seconds while still waiting.
        assert_eq!(wait_step(ms(900), Asked::Late), (Asked::Not, ASK_AGAIN));
        // Stale deadlines (nothing verified for a while): asked for again.
        assert_eq!(wait_step(ms(5_600), Asked::Soon), (Asked::Late, ASK_AGAIN));
    }

    #[test]
    fn a_download_rate_is_measured_over_a_tenth_of_a_second_or_more() {
        let t0 = Instant::now();
        let mut r = RateSample {
            at: t0,
            bytes: 0,
            bps: 0,
        };
        // Too soon to say: still the last measure.
        assert_eq!(r.update(t0 + Duration::from_millis(40), 50_000_000), 0);
        // 30 MB in 100 ms.
        assert_eq!(r.update(t0 + RATE_SAMPLE, 30_000_000), 300_000_000);
        assert!(r.update(t0 + RATE_SAMPLE, 30_000_000) >= FAST_DOWNLOAD_BPS);
        // Stalled for a second: slow, so reads ask with deadlines again.
        assert_eq!(r.update(t0 + Duration::from_millis(1_100), 30_000_000), 0);
        // Bytes counted down (pieces revoked): not a negative rate.
        assert_eq!(r.update(t0 + Duration::from_millis(1_300), 1_000), 0);
    }

    #[test]
    fn a_fetch_older_than_the_timeout_gives_a_new_read_its_own_wait() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(7);
        assert_eq!(read_deadline(now, Some(t0), TIMEOUT), now + TIMEOUT);
        // A grace longer than the timeout itself is capped by the timeout.
        let short = Duration::from_millis(100);
        let now = t0 + Duration::from_millis(50);
        assert_eq!(read_deadline(now, Some(t0), short), now + short);
    }
}
