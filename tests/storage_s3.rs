//! The storage core against a real S3-protocol server on 127.0.0.1: chunks stored,
//! uploaded encrypted, evicted, fetched back byte for byte; tampering detected; the
//! server going away mid-upload; a SIGKILL mid-upload.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bae::catalog::{Catalog, FileRecord, Layout, NewTorrent};
use bae::model::{ChunkState, PieceIndex, TorrentId, CHUNK_LEN};
use bae::remote::crypto::Key;
use bae::remote::{object_key_for, ObjectStore, Remote, RemoteOptions, RetryPolicy, S3Store};
use bae::store::{FetchError, Store, StoreError};
use bae::tiering::{Fetcher, Journal, Uploader};
use common::s3::{S3Server, BUCKET};

const PREFIX: &str = "lib";

struct Lib {
    _dir: tempfile::TempDir,
    catalog: Arc<Catalog>,
    store: Arc<Store>,
    id: TorrentId,
    data: Vec<u8>,
}

fn content(len: u64, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7919 + seed) >> 3) as u8 ^ (i as u8))
        .collect()
}

/// A store holding one fully downloaded torrent of `len` bytes, not yet uploaded.
fn downloaded_library(len: u64, piece_len: u64) -> Lib {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(Catalog::open(&dir.path().join("bae.db")).unwrap());
    let id = catalog
        .add_torrent(&NewTorrent {
            info_hash_v1: Some([3; 20]),
            name: "album".into(),
            ..Default::default()
        })
        .unwrap();
    let layout = Layout {
        piece_len,
        total_len: len,
        files: vec![
            FileRecord {
                path: vec!["01.flac".into()],
                stream_offset: 0,
                len: len / 3,
                pad: false,
                mtime: 1,
            },
            FileRecord {
                path: vec!["02.flac".into()],
                stream_offset: len / 3,
                len: len - len / 3,
                pad: false,
                mtime: 1,
            },
        ],
    };
    catalog.set_layout(id, &layout, None, None).unwrap();
    catalog.set_seeding(id, false, false).unwrap();
    let store = Store::open(
        &dir.path().join("cache"),
        catalog.clone(),
        1 << 40,
        tokio::runtime::Handle::current(),
    )
    .unwrap();
    let g = store.register_torrent(id).unwrap();
    let data = content(len, 11);
    for off in (0..len).step_by(16384) {
        let end = (off + 16384).min(len);
        store
            .write(id, off, &data[off as usize..end as usize])
            .unwrap();
    }
    let pieces: Vec<PieceIndex> = (0..g.num_pieces()).map(PieceIndex).collect();
    store.pieces_verified(id, &pieces);
    store.flush().unwrap();
    Lib {
        _dir: dir,
        catalog,
        store,
        id,
        data,
    }
}

async fn remote_for(server: &S3Server, retry: RetryPolicy) -> Remote {
    let s3 = S3Store::new(server.config(PREFIX)).await.unwrap();
    Remote::new(
        Arc::new(s3),
        RemoteOptions {
            max_concurrent_requests: 16,
            retry,
        },
    )
}

fn object_path(server: &S3Server, object_id: &str) -> PathBuf {
    server.object_path(BUCKET, &format!("{PREFIX}/{}", object_key_for(object_id)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_round_trip_through_s3_encrypted() {
    let s3dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(s3dir.path());
    let lib = downloaded_library(5 * CHUNK_LEN + 4321, 256 * 1024);
    let key = Arc::new(Key::generate());
    let remote = remote_for(&server, RetryPolicy::default()).await;
    lib.store
        .set_source(Arc::new(Fetcher::new(remote.clone(), key.clone())));
    let uploader = Uploader::start(
        lib.store.clone(),
        remote.clone(),
        key.clone(),
        Journal::started(remote.clone(), key.clone(), lib.catalog.clone()).unwrap(),
        4,
    );
    assert!(uploader.wait_idle(Duration::from_secs(60)).await);
    let chunks = lib.catalog.chunks(lib.id).unwrap();
    assert_eq!(chunks.len(), 6);
    for c in &chunks {
        assert_eq!(c.state, ChunkState::Uploaded);
        // Stored encrypted: the object is not the plaintext and does not contain it.
        let object = std::fs::read(object_path(&server, c.object_id.as_ref().unwrap())).unwrap();
        let start = u64::from(c.index) * CHUNK_LEN;
        let plain = &lib.data[start as usize..(start + c.len) as usize];
        assert!(object.len() > plain.len());
        assert!(!object.windows(64).any(|w| w == &plain[..64]));
    }
    // Object names reveal nothing: no torrent or file names anywhere in the bucket.
    let names = remote.list("").await.unwrap();
    assert_eq!(names.iter().filter(|n| n.starts_with("chunks/")).count(), 6);
    assert!(names
        .iter()
        .all(|n| !n.contains("album") && !n.contains("flac")));

    assert_eq!(lib.store.evict_all(), 6);
    assert_eq!(lib.store.stats().used_bytes, 0);
    let all = lib
        .store
        .read_verified(lib.id, 0..lib.data.len() as u64)
        .await
        .unwrap();
    assert!(all[..] == lib.data[..], "bytes fetched from S3 differ");
    uploader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn altered_truncated_or_swapped_objects_are_never_served() {
    let s3dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(s3dir.path());
    let lib = downloaded_library(3 * CHUNK_LEN, 1024 * 1024);
    let key = Arc::new(Key::generate());
    let remote = remote_for(&server, RetryPolicy::none()).await;
    lib.store
        .set_source(Arc::new(Fetcher::new(remote.clone(), key.clone())));
    let uploader = Uploader::start(
        lib.store.clone(),
        remote.clone(),
        key.clone(),
        Journal::started(remote.clone(), key.clone(), lib.catalog.clone()).unwrap(),
        4,
    );
    assert!(uploader.wait_idle(Duration::from_secs(60)).await);
    uploader.stop();
    let chunks = lib.catalog.chunks(lib.id).unwrap();
    let path = |i: usize| object_path(&server, chunks[i].object_id.as_ref().unwrap());

    // Chunk 0: one bit flipped in the server's storage.
    let mut obj = std::fs::read(path(0)).unwrap();
    obj[100] ^= 1;
    std::fs::write(path(0), obj).unwrap();
    // Chunk 1: truncated.
    let obj = std::fs::read(path(1)).unwrap();
    std::fs::write(path(1), &obj[..obj.len() / 2]).unwrap();
    // Chunk 2: replaced by chunk 0's (valid, but another chunk's) object.
    let good0 = {
        let mut o = std::fs::read(path(0)).unwrap();
        o[100] ^= 1;
        o
    };
    std::fs::write(path(2), &good0).unwrap();

    lib.store.evict_all();
    for i in 0..3u64 {
        let r = lib
            .store
            .read_verified(lib.id, i * CHUNK_LEN..i * CHUNK_LEN + 10)
            .await;
        match r {
            Err(StoreError::Fetch {
                error: FetchError::Integrity(_),
                ..
            }) => {}
            other => panic!("chunk {i}: expected an integrity error, got {other:?}"),
        }
    }
    // Put chunk 0 back as it was: it is served again, correctly.
    std::fs::write(path(0), &good0).unwrap();
    let r = lib.store.read_verified(lib.id, 0..CHUNK_LEN).await.unwrap();
    assert!(r[..] == lib.data[..CHUNK_LEN as usize]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_survive_the_server_going_away() {
    let s3dir = tempfile::tempdir().unwrap();
    let mut server = S3Server::start(s3dir.path());
    let lib = downloaded_library(8 * CHUNK_LEN, 512 * 1024);
    lib.store.set_limit_bytes(CHUNK_LEN);
    server.stop();
    let key = Arc::new(Key::generate());
    let retry = RetryPolicy {
        max_attempts: 3,
        base_delay_ms: 50,
        max_delay_ms: 200,
        total_deadline_ms: Some(2_000),
    };
    let remote = remote_for(&server, retry).await;
    let uploader = Uploader::start(
        lib.store.clone(),
        remote.clone(),
        key.clone(),
        Journal::started(remote, key, lib.catalog.clone()).unwrap(),
        4,
    );
    assert!(!uploader.wait_idle(Duration::from_secs(3)).await);
    // Nothing could be uploaded, so nothing was evicted despite the 1 MiB limit.
    assert_eq!(lib.store.stats().used_bytes, 8 * CHUNK_LEN);
    assert!(uploader.status().last_error.is_some());
    assert!(lib
        .catalog
        .chunks(lib.id)
        .unwrap()
        .iter()
        .all(|c| c.state == ChunkState::Complete));
    server.restart();
    assert!(uploader.wait_idle(Duration::from_secs(60)).await);
    assert!(lib.store.stats().used_bytes <= CHUNK_LEN);
    assert_eq!(uploader.status().uploaded_chunks, 8);
    uploader.stop();
}

fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/store_worker");
    assert!(
        path.exists(),
        "build the examples first: {}",
        path.display()
    );
    path
}

struct Worker(Child);
impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker(home: &Path, server: &S3Server, chunks: u32, latency_ms: u64) -> Worker {
    Worker(
        Command::new(worker_binary())
            .arg(home)
            .arg(server.endpoint())
            .arg(BUCKET)
            .arg(chunks.to_string())
            .arg(latency_ms.to_string())
            .env("AWS_ACCESS_KEY_ID", common::s3::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", common::s3::SECRET_KEY)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn objects(dir: &Path) -> HashMap<PathBuf, (u64, i64)> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if e.path().to_string_lossy().contains("/chunks/") {
                out.insert(
                    e.path(),
                    (m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
                );
            }
        }
    }
    out
}

#[test]
fn sigkill_mid_upload_then_restart_uploads_everything_once() {
    let s3dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(s3dir.path());
    let home = tempfile::tempdir().unwrap();
    let bucket_dir = s3dir.path().join(BUCKET);
    const CHUNKS: u32 = 24;

    let mut w = start_worker(home.path(), &server, CHUNKS, 150);
    let deadline = Instant::now() + Duration::from_secs(60);
    let uploaded_now = || {
        Catalog::open(&home.path().join("bae.db"))
            .and_then(|c| c.chunks(TorrentId(1)))
            .map(|c| c.iter().filter(|c| c.state == ChunkState::Uploaded).count())
            .unwrap_or(0)
    };
    while objects(&bucket_dir).len() < (CHUNKS / 3) as usize || uploaded_now() == 0 {
        assert!(Instant::now() < deadline, "worker made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL: no chance to clean up.
    unsafe { libc::kill(w.0.id() as i32, libc::SIGKILL) };
    let _ = w.0.wait();

    let catalog = Catalog::open(&home.path().join("bae.db")).unwrap();
    let before = catalog.chunks(TorrentId(1)).unwrap();
    let uploaded_before: Vec<_> = before
        .iter()
        .filter(|c| c.state == ChunkState::Uploaded)
        .collect();
    assert!(!uploaded_before.is_empty() && uploaded_before.len() < CHUNKS as usize);
    let seen = objects(&bucket_dir);
    drop(catalog);

    let mut w = start_worker(home.path(), &server, CHUNKS, 0);
    let status = w.0.wait().unwrap();
    assert!(status.success());
    let catalog = Catalog::open(&home.path().join("bae.db")).unwrap();
    assert_eq!(catalog.integrity_check().unwrap(), "ok");
    let after = catalog.chunks(TorrentId(1)).unwrap();
    assert!(after.iter().all(|c| c.state == ChunkState::Uploaded));
    let now = objects(&bucket_dir);
    assert_eq!(
        now.len(),
        CHUNKS as usize,
        "one object per chunk, no strays"
    );
    // Chunks recorded as uploaded before the kill were not uploaded again.
    for c in uploaded_before {
        let p = bucket_dir.join(object_key_for(c.object_id.as_ref().unwrap()));
        assert_eq!(
            seen.get(&p),
            now.get(&p),
            "{} was uploaded twice",
            p.display()
        );
    }
}

/// A finished torrent's journal is compacted into one `chunks` object and its journal
/// objects deleted by name: the ones the compaction covers, never a later one (a chunk
/// uploaded again after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_deletes_the_journal_it_covers_and_nothing_newer() {
    let s3dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(s3dir.path());
    let lib = downloaded_library(3 * CHUNK_LEN + 99, 256 * 1024);
    let key = Arc::new(Key::generate());
    let remote = remote_for(&server, RetryPolicy::default()).await;
    let uid = hex::encode(lib.catalog.torrent(lib.id).unwrap().uid);
    let later = format!("meta/t/{uid}/j/00000000ffffffff");
    remote
        .put(&later, bytes::Bytes::from_static(b"a later journal"))
        .await
        .unwrap();
    let journal = Journal::started(remote.clone(), key.clone(), lib.catalog.clone()).unwrap();
    let uploader = Uploader::start(
        lib.store.clone(),
        remote.clone(),
        key.clone(),
        journal.clone(),
        1,
    );
    assert!(uploader.wait_idle(Duration::from_secs(60)).await);
    let chunks_object = format!("meta/t/{uid}/chunks");
    let deadline = Instant::now() + Duration::from_secs(60);
    let names = loop {
        journal.flush_meta(Duration::from_secs(10)).await;
        let names = remote.list(&format!("meta/t/{uid}/")).await.unwrap();
        if names.contains(&chunks_object) {
            break names;
        }
        assert!(Instant::now() < deadline, "never compacted: {names:?}");
    };
    let journals: Vec<&String> = names.iter().filter(|n| n.contains("/j/")).collect();
    assert_eq!(journals, vec![&later], "{names:?}");
    uploader.stop();
}
