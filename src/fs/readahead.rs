//! Per-open-file detection of sequential reading, and the read-ahead window it earns.
//!
//! A reader is sequential when each read starts near where the previous one ended
//! (within a few times the read's own length, at least [`MIN_SLACK_BYTES`] and at most
//! [`SEQUENTIAL_SLACK_BYTES`], because the kernel issues read-ahead requests
//! concurrently and they may arrive slightly out of order; small random reads must not
//! pass for a stream). A sequential reader's
//! window starts at [`INITIAL_WINDOW_BYTES`] and doubles per read up to the configured
//! maximum; a jump resets it. Each range is asked for once: the state remembers how far
//! it has already prefetched. Pure logic, no I/O.

use std::ops::Range;

use crate::model::CHUNK_LEN;

/// The first read-ahead window of a sequential reader: one chunk.
pub const INITIAL_WINDOW_BYTES: u64 = CHUNK_LEN;

/// How far a read may start from the previous read's end and still count as sequential.
pub const SEQUENTIAL_SLACK_BYTES: u64 = 2 * CHUNK_LEN;

/// The slack allowed for any read, however small (the kernel's own read-ahead requests
/// are 128 KiB at least).
pub const MIN_SLACK_BYTES: u64 = 128 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadAhead {
    /// The furthest end of the reads seen so far in the current sequential run.
    next_offset: u64,
    /// Current window; 0 after a jump.
    window_bytes: u64,
    /// File-relative offset up to which read-ahead has already been requested.
    prefetched_until: u64,
}

impl ReadAhead {
    /// Records a read of file bytes `[offset, end)` and returns the file-relative range
    /// to prefetch now, if any, never past `limit` (the file's length, or more when the
    /// bytes after the file are worth reading ahead too).
    pub fn on_read(
        &mut self,
        offset: u64,
        end: u64,
        limit: u64,
        max_window_bytes: u64,
    ) -> Option<Range<u64>> {
        let slack = end
            .saturating_sub(offset)
            .saturating_mul(4)
            .clamp(MIN_SLACK_BYTES, SEQUENTIAL_SLACK_BYTES);
        let sequential = offset.abs_diff(self.next_offset) <= slack;
        if !sequential {
            self.next_offset = end;
            self.window_bytes = 0;
            self.prefetched_until = end;
            return None;
        }
        self.next_offset = self.next_offset.max(end);
        self.window_bytes = if self.window_bytes == 0 {
            INITIAL_WINDOW_BYTES.min(max_window_bytes)
        } else {
            (self.window_bytes * 2).min(max_window_bytes)
        };
        let start = self.prefetched_until.max(end);
        let target = end.saturating_add(self.window_bytes).min(limit);
        if target > start {
            self.prefetched_until = target;
            Some(start..target)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn sequential_reads_grow_the_window_to_the_maximum() {
        let mut ra = ReadAhead::default();
        let len = 1000 * MIB;
        assert_eq!(ra.on_read(0, MIB, len, 8 * MIB), Some(MIB..2 * MIB));
        assert_eq!(
            ra.on_read(MIB, 2 * MIB, len, 8 * MIB),
            Some(2 * MIB..4 * MIB)
        );
        assert_eq!(
            ra.on_read(2 * MIB, 3 * MIB, len, 8 * MIB),
            Some(4 * MIB..7 * MIB)
        );
        assert_eq!(
            ra.on_read(3 * MIB, 4 * MIB, len, 8 * MIB),
            Some(7 * MIB..12 * MIB)
        );
        // Capped at 8 MiB ahead of the read.
        assert_eq!(
            ra.on_read(4 * MIB, 5 * MIB, len, 8 * MIB),
            Some(12 * MIB..13 * MIB)
        );
    }

    #[test]
    fn a_jump_resets_and_the_next_sequential_read_restarts_small() {
        let mut ra = ReadAhead::default();
        let len = 1000 * MIB;
        ra.on_read(0, MIB, len, 16 * MIB);
        ra.on_read(MIB, 2 * MIB, len, 16 * MIB);
        assert_eq!(ra.on_read(500 * MIB, 501 * MIB, len, 16 * MIB), None);
        assert_eq!(
            ra.on_read(501 * MIB, 502 * MIB, len, 16 * MIB),
            Some(502 * MIB..503 * MIB)
        );
    }

    #[test]
    fn slightly_reordered_kernel_reads_stay_sequential() {
        let mut ra = ReadAhead::default();
        let len = 1000 * MIB;
        let k = 128 * 1024;
        ra.on_read(0, k, len, 16 * MIB);
        ra.on_read(2 * k, 3 * k, len, 16 * MIB);
        ra.on_read(k, 2 * k, len, 16 * MIB);
        assert!(ra.window_bytes >= 4 * INITIAL_WINDOW_BYTES);
    }

    #[test]
    fn small_random_reads_near_each_other_are_not_a_stream() {
        let mut ra = ReadAhead::default();
        let len = 30 * MIB;
        let k = 4096;
        // 4 KiB reads a few hundred KiB apart (fio's random reads in a small file).
        for at in [
            10 * MIB,
            10 * MIB + 600 * 1024,
            11 * MIB,
            11 * MIB + 300 * 1024,
        ] {
            assert_eq!(ra.on_read(at, at + k, len, 16 * MIB), None, "read at {at}");
        }
        // Small reads one after the other are a stream.
        let at = 11 * MIB + 300 * 1024 + k;
        assert!(ra.on_read(at, at + k, len, 16 * MIB).is_some());
    }

    #[test]
    fn never_past_the_end_of_the_file_and_never_twice() {
        let mut ra = ReadAhead::default();
        let len = 3 * MIB / 2;
        assert_eq!(ra.on_read(0, MIB, len, 16 * MIB), Some(MIB..len));
        assert_eq!(ra.on_read(MIB, len, len, 16 * MIB), None);
    }
}
