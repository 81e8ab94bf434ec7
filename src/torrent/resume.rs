//! libtorrent resume data on disk: one file per torrent, `<dir>/<torrent id>.resume`,
//! holding what libtorrent's `write_resume_data_buf` made.
//!
//! Why: blocks written to the store but not yet part of a verified piece are lost to a
//! `kill -9` unless something remembers which blocks they were; libtorrent's resume data
//! does (its unfinished pieces' block bitmaps). The session saves it now and then for
//! torrents whose data changed and at a clean stop, and hands it back at add, where only
//! those bitmaps are used (`keep_partial_blocks` in `cpp/bae_session.cpp`): the store,
//! not this file, says which pieces are verified.
//!
//! Invariants: a file is replaced atomically (written beside, synced, renamed), so a
//! crash leaves the old file or the new one, never a torn one; a file that cannot be
//! read, is too large, or belongs to another torrent (ids can be reused) is ignored.
//! Writes happen on the session's own `bae-resume` thread, never on the alert thread,
//! which feeds verified pieces to the store and must not wait on a slow disk.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::model::TorrentId;

/// Larger files are not resume data of ours.
const MAX_RESUME_BYTES: u64 = 64 << 20;

/// The directory of resume files.
#[derive(Clone, Debug)]
pub(crate) struct ResumeFiles {
    dir: PathBuf,
}

impl ResumeFiles {
    pub(crate) fn new(dir: PathBuf) -> Self {
        ResumeFiles { dir }
    }

    fn path(&self, t: TorrentId) -> PathBuf {
        self.dir.join(format!("{}.resume", t.0))
    }

    /// The saved resume data of `t`, or empty when there is none worth reading.
    pub(crate) fn load(&self, t: TorrentId) -> Vec<u8> {
        let path = self.path(t);
        let read = File::open(&path).and_then(|f| {
            let mut buf = Vec::new();
            f.take(MAX_RESUME_BYTES + 1).read_to_end(&mut buf)?;
            Ok(buf)
        });
        match read {
            Ok(buf) if buf.len() as u64 <= MAX_RESUME_BYTES => buf,
            Ok(_) => {
                tracing::warn!(path = %path.display(), "ignoring an oversized resume file");
                Vec::new()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read resume data");
                Vec::new()
            }
        }
    }

    /// Replaces `t`'s resume data atomically and durably.
    pub(crate) fn save(&self, t: TorrentId, data: &[u8]) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self.path(t);
        let tmp = self.dir.join(format!("{}.resume.tmp", t.0));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            // The rename itself, durable.
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    pub(crate) fn discard(&self, t: TorrentId) {
        match fs::remove_file(self.path(t)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(torrent = %t, error = %e, "cannot delete resume data"),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What the `bae-resume` thread is asked to do, in order.
pub(crate) enum ResumeJob {
    Save(TorrentId, Vec<u8>),
    Discard(TorrentId),
}

/// Resume data asked of libtorrent and not yet on disk (or given up on), so that a
/// stopping session can wait for the last of it.
#[derive(Default)]
pub(crate) struct Outstanding {
    count: Mutex<usize>,
    done: Condvar,
}

impl Outstanding {
    pub(crate) fn add(&self, n: usize) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += n;
    }

    pub(crate) fn finish_one(&self) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *count = count.saturating_sub(1);
        self.done.notify_all();
    }

    /// Waits until nothing is outstanding or `timeout` passes; true if nothing is.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            count = self
                .done
                .wait_timeout(count, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// The `bae-resume` thread: runs jobs until every sender is gone. A failing save is
/// reported once until one succeeds again (a full disk would otherwise log every few
/// seconds per torrent).
pub(crate) fn run_writer(files: ResumeFiles, jobs: Receiver<ResumeJob>, outstanding: &Outstanding) {
    let mut failing: HashMap<TorrentId, bool> = HashMap::new();
    for job in jobs {
        match job {
            ResumeJob::Save(t, data) => {
                match files.save(t, &data) {
                    Ok(()) => {
                        failing.remove(&t);
                    }
                    Err(e) => {
                        if !failing.insert(t, true).unwrap_or(false) {
                            tracing::warn!(torrent = %t, dir = %files.dir().display(), error = %e, "cannot save resume data; blocks of unfinished pieces may be downloaded again after a crash");
                        }
                    }
                }
                outstanding.finish_one();
            }
            ResumeJob::Discard(t) => {
                failing.remove(&t);
                files.discard(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_resume_data_is_replaced_whole_and_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let files = ResumeFiles::new(dir.path().join("resume"));
        let t = TorrentId(7);
        assert!(files.load(t).is_empty());
        files.save(t, b"d4:infoe").unwrap();
        files.save(t, b"second").unwrap();
        assert_eq!(files.load(t), b"second");
        // Nothing but the one file is left behind.
        let names: Vec<_> = fs::read_dir(files.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("7.resume")]);
        files.discard(t);
        assert!(files.load(t).is_empty());
        files.discard(t);
    }

    #[test]
    fn waiting_for_outstanding_saves_ends_when_they_are_done() {
        let o = std::sync::Arc::new(Outstanding::default());
        assert!(o.wait(Duration::ZERO));
        o.add(2);
        assert!(!o.wait(Duration::from_millis(1)));
        let o2 = std::sync::Arc::clone(&o);
        let t = std::thread::spawn(move || {
            o2.finish_one();
            o2.finish_one();
        });
        assert!(o.wait(Duration::from_secs(60)));
        t.join().unwrap();
    }
}
