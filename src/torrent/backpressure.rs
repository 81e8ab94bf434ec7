//! The write gate: when downloads must wait for room in the cache (or on its disk).
//!
//! Pure logic, driven by `disk.rs`: every block libtorrent hands over is `admit`ted (on
//! the network thread, so it only does arithmetic), and a few times a second the
//! storage's [`Room`] is `sample`d. While the gate is closed, `async_write` answers
//! "exceeded" and the write worker still stores each block but holds back its
//! completion, so libtorrent keeps the peers that sent them from reading their sockets;
//! opening the gate releases the completions and wakes the peers (`on_disk`).
//!
//! Invariants:
//! - the gate never blocks anything but new blocks from peers: hashing, committing,
//!   uploading, evicting and reads go on while it is closed, so room can come back;
//! - it opens again only with some room (`resume_margin`), so peers are not woken for
//!   a single block;
//! - closed by the cache bound with no room coming back for [`STALL`] (what is held
//!   cannot drain: partial chunks waiting for their other pieces, pinned torrents), it
//!   grants a small overrun instead of waiting forever. The free-space reserve is
//!   never overrun: a full disk waits until room comes back (uploads then evictions,
//!   `bae evict`, space freed by the user).

use std::time::{Duration, Instant};

use super::storage::Room;
#[cfg(test)]
use super::storage::RoomLimit;

/// How long a gate closed by the cache bound waits for room before it grants an overrun.
pub(crate) const STALL: Duration = Duration::from_secs(3);

/// What a block costs each bound: the store accounts a chunk whole from its first
/// written byte (`cache`), the disk fills byte by byte (`disk`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cost {
    pub cache: u64,
    pub disk: u64,
}

#[derive(Debug)]
pub(crate) struct Gate {
    /// Cost that may be admitted between the last sample and the next one.
    budget: Cost,
    /// Cost admitted since the last sample.
    admitted: Cost,
    /// Cache cost that may still be admitted beyond the budget (a stall grant).
    grant: u64,
    closed: bool,
    /// The room the last sample found, while it is what keeps the gate shut.
    reason: Option<Room>,
    /// While closed: the most room seen, and when it last grew.
    best: u64,
    progress_at: Instant,
    /// Closed by `admit` (which has no clock): the next sample starts the stall timer.
    unsampled: bool,
    /// Overruns granted so far (for logs).
    pub(crate) grants: u64,
    /// Cost admitted since the gate last closed: blocks peers had already sent, and
    /// those libtorrent had already asked for, keep coming after it closes.
    after_close: Cost,
    /// What a closing is expected to let through (the largest recent `after_close`,
    /// decaying): taken off every budget, so the gate closes that much early.
    overshoot: Cost,
}

impl Gate {
    /// An open gate with no bound until the first sample.
    pub(crate) fn new(now: Instant) -> Gate {
        Gate {
            budget: Cost {
                cache: u64::MAX,
                disk: u64::MAX,
            },
            admitted: Cost::default(),
            grant: 0,
            closed: false,
            reason: None,
            best: 0,
            progress_at: now,
            unsampled: false,
            grants: 0,
            after_close: Cost::default(),
            overshoot: Cost::default(),
        }
    }

    pub(crate) fn admitted(&self) -> Cost {
        self.admitted
    }

    /// What a closing is expected to let through (see the field).
    pub(crate) fn overshoot(&self) -> Cost {
        self.overshoot
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Why downloads wait, while they do.
    #[cfg(test)]
    pub(crate) fn reason(&self) -> Option<&Room> {
        self.reason.as_ref().filter(|_| self.closed)
    }

    /// A block costing `cost` is being queued (it is always accepted). Returns whether
    /// a bound is reached: libtorrent should stop reading from peers.
    pub(crate) fn admit(&mut self, cost: Cost) -> bool {
        self.admitted.cache = self.admitted.cache.saturating_add(cost.cache);
        self.admitted.disk = self.admitted.disk.saturating_add(cost.disk);
        if self.closed {
            self.after_close.cache = self.after_close.cache.saturating_add(cost.cache);
            self.after_close.disk = self.after_close.disk.saturating_add(cost.disk);
            return true;
        }
        let disk_over = self.admitted.disk > self.budget.disk;
        let cache_over = self.admitted.cache > self.budget.cache;
        if cache_over && !disk_over && self.grant >= cost.cache {
            self.grant -= cost.cache;
        } else if cache_over || disk_over {
            self.grant = 0;
            self.close();
        }
        self.closed
    }

    /// A new look at the storage: `room` (None: unbounded), `queued`: cost admitted and
    /// not yet stored (not in `room` yet). Returns true when the gate opened: the held
    /// completions must be released and the waiting peers woken.
    pub(crate) fn sample(&mut self, room: Option<&Room>, queued: Cost, now: Instant) -> bool {
        self.admitted = Cost::default();
        let Some(room) = room else {
            self.budget = Cost {
                cache: u64::MAX,
                disk: u64::MAX,
            };
            self.reason = None;
            return self.open();
        };
        if self.closed {
            self.learn();
        }
        let margin = room.resume_margin();
        // What is really free now, and the part of it the gate hands out: the expected
        // overshoot is kept back, so the gate closes that much early.
        let real = Cost {
            cache: room.cache.saturating_sub(queued.cache),
            disk: room
                .disk
                .map_or(u64::MAX, |d| d.saturating_sub(queued.disk)),
        };
        let cache = real.cache.saturating_sub(self.overshoot.cache);
        let disk = real.disk.saturating_sub(self.overshoot.disk);
        self.budget = Cost { cache, disk };
        if disk < margin {
            // The reserve is never overrun.
            self.grant = 0;
        }
        let avail = cache.min(disk);
        if !self.closed {
            if avail == 0 && self.grant == 0 {
                self.close();
            } else {
                return false;
            }
        }
        self.reason = Some(room.clone());
        if std::mem::take(&mut self.unsampled) {
            self.best = avail;
            self.progress_at = now;
        }
        if avail >= margin {
            self.grant = 0;
            return self.open();
        }
        if avail > self.best {
            self.best = avail;
            self.progress_at = now;
        }
        let stalled = now.duration_since(self.progress_at) >= STALL;
        if stalled && real.disk >= margin && real.cache >= margin {
            // Less room than the overshoot, for long: the room there is handed out a
            // margin at a time, or partial chunks could never complete and nothing would
            // become evictable.
            self.budget = Cost {
                cache: margin,
                disk: margin,
            };
            self.progress_at = now;
            tracing::info!(room = %room, "little room for a while: downloading a little at a time");
            return self.open();
        }
        // No cap on the overruns: what holds the cache may be partial chunks that only
        // more data completes (a cap deadlocked a download with many partial chunks).
        if disk >= margin && stalled {
            self.grants += 1;
            self.grant = margin;
            self.progress_at = now;
            tracing::warn!(
                room = %room,
                grant_bytes = margin,
                "no cache space came back for {} s: letting the download overrun the bound a little",
                STALL.as_secs()
            );
            return self.open();
        }
        false
    }

    fn close(&mut self) {
        self.closed = true;
        self.unsampled = true;
        self.after_close = Cost::default();
        // An old large overshoot is forgotten slowly, a quarter per closing.
        let decay = |old: u64| old - old / 4;
        self.overshoot = Cost {
            cache: decay(self.overshoot.cache),
            disk: decay(self.overshoot.disk),
        };
    }

    /// The overshoot of the current closing so far counts at once.
    fn learn(&mut self) {
        self.overshoot = Cost {
            cache: self.overshoot.cache.max(self.after_close.cache),
            disk: self.overshoot.disk.max(self.after_close.disk),
        };
    }

    fn open(&mut self) -> bool {
        let was = self.closed;
        self.closed = false;
        self.reason = None;
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A cost that is the same for both bounds.
    fn c(bytes: u64) -> Cost {
        Cost {
            cache: bytes,
            disk: bytes,
        }
    }

    fn cache(bytes: u64) -> Room {
        Room {
            cache: bytes,
            disk: Some(1 << 40),
            limit: RoomLimit::Cache {
                held: 64 * MIB - bytes.min(64 * MIB),
                not_uploaded: 10 * MIB,
                limit: 64 * MIB,
            },
        }
    }

    fn disk(bytes: u64) -> Room {
        Room {
            cache: 1 << 40,
            disk: Some(bytes),
            limit: RoomLimit::Disk {
                free: bytes,
                reserve: 16 * MIB,
            },
        }
    }

    #[test]
    fn closes_at_the_budget_and_reopens_with_room() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        assert!(!g.admit(c(MIB)), "unbounded before the first sample");
        assert!(!g.sample(Some(&cache(2 * MIB)), c(MIB), t0));
        // 1 MiB of room after what is queued.
        assert!(!g.admit(c(MIB / 2)));
        assert!(!g.admit(c(MIB / 2)));
        assert!(g.admit(c(16 << 10)), "over the budget");
        assert!(g.is_closed());
        // A little room is not enough to wake the peers (margin: 4 MiB for 64 MiB).
        assert!(!g.sample(Some(&cache(MIB)), c(0), t0 + Duration::from_millis(250)));
        assert!(g
            .reason()
            .is_some_and(|r| r.to_string().contains("not yet uploaded")));
        assert!(g.sample(Some(&cache(8 * MIB)), c(0), t0 + Duration::from_millis(500)));
        assert!(!g.is_closed());
        assert!(g.reason().is_none());
        // The new budget counts from this sample.
        assert!(!g.admit(c(7 * MIB)));
        assert!(g.admit(c(2 * MIB)));
    }

    #[test]
    fn a_sample_with_no_room_closes_it() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        assert!(!g.sample(Some(&cache(MIB)), c(2 * MIB), t0));
        assert!(g.is_closed());
        assert!(g.admit(c(1)), "closed: every block says exceeded");
        // No bound any more: open.
        assert!(g.sample(None, c(0), t0));
        assert!(!g.admit(c(100 * MIB)));
    }

    #[test]
    fn a_cache_stall_grants_an_overrun_but_a_full_disk_never_does() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        g.sample(Some(&cache(0)), c(0), t0);
        assert!(g.is_closed());
        let mut t = t0;
        for _ in 0..11 {
            t += Duration::from_millis(250);
            assert!(
                !g.sample(Some(&cache(0)), c(0), t),
                "still within the stall delay"
            );
        }
        t += Duration::from_millis(250);
        assert!(
            g.sample(Some(&cache(0)), c(0), t),
            "stalled: overrun granted"
        );
        assert_eq!(g.grants, 1);
        // The grant (4 MiB) is spent across samples, then the gate closes again.
        assert!(!g.admit(c(3 * MIB)));
        assert!(!g.sample(Some(&cache(0)), c(0), t + Duration::from_millis(250)));
        assert!(!g.admit(c(MIB)));
        assert!(g.admit(c(MIB)));

        let mut g = Gate::new(t0);
        g.sample(Some(&disk(0)), c(0), t0);
        for i in 1..100 {
            assert!(!g.sample(Some(&disk(0)), c(0), t0 + Duration::from_secs(i)));
        }
        assert!(g.is_closed(), "the reserve is never overrun");
        assert!(g.reason().unwrap().to_string().starts_with("disk full"));
        assert!(g.sample(Some(&disk(8 * MIB)), c(0), t0 + Duration::from_secs(101)));
    }

    #[test]
    fn each_bound_counts_its_own_cost() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        let room = Room {
            cache: 8 * MIB,
            disk: Some(2 * MIB),
            limit: RoomLimit::Disk {
                free: 18 * MIB,
                reserve: 16 * MIB,
            },
        };
        g.sample(Some(&room), c(0), t0);
        // Blocks into chunks already begun cost the cache nothing, the disk their bytes.
        let block = Cost {
            cache: 0,
            disk: 16 << 10,
        };
        for _ in 0..128 {
            assert!(!g.admit(block));
        }
        assert!(g.admit(block), "2 MiB of disk room spent");
        let mut g = Gate::new(t0);
        g.sample(Some(&cache(2 * MIB)), c(0), t0);
        let new_chunk = Cost {
            cache: MIB,
            disk: 16 << 10,
        };
        assert!(!g.admit(new_chunk));
        assert!(!g.admit(new_chunk));
        assert!(g.admit(new_chunk), "a third chunk begun does not fit");
    }

    #[test]
    fn what_came_after_a_closing_is_kept_free_next_time() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        g.sample(Some(&disk(4 * MIB)), c(0), t0);
        assert!(!g.admit(c(4 * MIB)));
        assert!(g.admit(c(1)), "closed at the budget");
        // The pipeline delivers 3 MiB more after the gate closed.
        for _ in 0..3 {
            assert!(g.admit(c(MIB)));
        }
        assert!(g.sample(Some(&disk(8 * MIB)), c(0), t0 + Duration::from_millis(250)));
        assert_eq!(g.overshoot().disk, 3 * MIB);
        // 8 MiB of room, 3 MiB of it kept for the next overshoot.
        assert!(!g.admit(c(5 * MIB)));
        assert!(g.admit(c(1)));
        // Calmer closings: the estimate shrinks, by a quarter at a time.
        g.sample(Some(&disk(16 * MIB)), c(0), t0 + Duration::from_millis(500));
        assert_eq!(g.overshoot().disk, 3 * MIB - 3 * MIB / 4);
        // Less room than the overshoot: after a stall the download goes on, a margin
        // (2 MiB) at a time.
        assert!(g.admit(c(16 * MIB)));
        let t = t0 + Duration::from_millis(750);
        assert!(!g.sample(Some(&disk(2 * MIB)), c(0), t));
        assert!(g.sample(Some(&disk(2 * MIB)), c(0), t + STALL));
        assert!(!g.admit(c(2 * MIB)));
        assert!(g.admit(c(1)));
    }

    #[test]
    fn growing_room_postpones_the_stall_grant() {
        let t0 = Instant::now();
        let mut g = Gate::new(t0);
        g.sample(Some(&cache(0)), c(0), t0);
        // Room creeps back (uploads drain slowly): no overrun, just wait for the margin.
        for i in 1..40u64 {
            let t = t0 + Duration::from_millis(250 * i);
            assert!(
                !g.sample(Some(&cache((i * 100) << 10)), c(0), t),
                "sample {i}"
            );
        }
        assert_eq!(g.grants, 0);
        assert!(g.sample(Some(&cache(4 * MIB)), c(0), t0 + Duration::from_secs(11)));
    }
}
