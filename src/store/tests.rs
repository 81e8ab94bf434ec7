use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use crate::catalog::{FileRecord, Layout, NewTorrent};
use crate::model::CHUNK_LEN;

/// A source that serves chunks from memory and counts fetches (unit tests of the
/// cache logic; the real remote path is covered by tests/storage_s3.rs).
#[derive(Default)]
struct MemSource {
    chunks: Mutex<HashMap<ChunkKey, Vec<u8>>>,
    fetches: AtomicUsize,
}

#[async_trait]
impl ChunkSource for MemSource {
    async fn fetch(&self, chunk: &RemoteChunk) -> Result<Bytes, FetchError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.chunks
            .lock()
            .unwrap()
            .get(&chunk.key)
            .cloned()
            .map(Bytes::from)
            .ok_or(FetchError::NotFound)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    catalog: Arc<Catalog>,
    store: Arc<Store>,
    id: TorrentId,
    data: Vec<u8>,
    rt: tokio::runtime::Runtime,
}

const PIECE: u64 = 768 * 1024;

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn fixture(total: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let catalog = Arc::new(Catalog::open(&dir.path().join("bae.db")).unwrap());
    let id = catalog
        .add_torrent(&NewTorrent {
            info_hash_v1: Some([1; 20]),
            name: "album".into(),
            ..Default::default()
        })
        .unwrap();
    let layout = Layout {
        piece_len: PIECE,
        total_len: total,
        files: vec![FileRecord {
            path: vec!["a.flac".into()],
            stream_offset: 0,
            len: total,
            pad: false,
            mtime: 0,
        }],
    };
    catalog.set_layout(id, &layout, None, None).unwrap();
    catalog.set_seeding(id, true, false).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Store::open(&root, catalog.clone(), 1 << 40, rt.handle().clone()).unwrap();
    store.register_torrent(id).unwrap();
    Fixture {
        _dir: dir,
        root,
        catalog,
        store,
        id,
        data: content(total as usize, 7),
        rt,
    }
}

/// A fixture whose torrent is downloaded whole and every chunk uploaded to `src`.
fn uploaded_fixture(total: u64) -> (Fixture, Arc<MemSource>) {
    let f = fixture(total);
    let src = Arc::new(MemSource::default());
    f.store.set_source(src.clone());
    f.download(0..f.store.geometry(f.id).unwrap().num_pieces());
    f.upload_all(&src);
    (f, src)
}

impl Fixture {
    /// Writes every piece in 16 KiB blocks, as libtorrent would, and verifies them.
    fn download(&self, pieces: std::ops::Range<u32>) {
        let g = self.store.geometry(self.id).unwrap();
        for p in pieces.clone() {
            let r = g.piece_range(PieceIndex(p));
            let mut off = r.start;
            while off < r.end {
                let end = (off + 16384).min(r.end);
                self.store
                    .write(self.id, off, &self.data[off as usize..end as usize])
                    .unwrap();
                off = end;
            }
        }
        let ps: Vec<PieceIndex> = pieces.map(PieceIndex).collect();
        self.store.pieces_verified(self.id, &ps);
        self.store.flush().unwrap();
    }

    fn read(&self, range: std::ops::Range<u64>) -> Result<Bytes, StoreError> {
        self.read_from(&self.store, range)
    }

    /// [`Fixture::read`] through another store on the same cache (see `reopen`).
    fn read_from(
        &self,
        store: &Arc<Store>,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let (s, id) = (store.clone(), self.id);
        self.rt
            .block_on(async move { s.read_verified(id, range).await })
    }

    /// The store opened afresh on the same cache directory and catalog (a restart; shut
    /// the old one down first).
    fn reopen(&self) -> Arc<Store> {
        Store::open(
            &self.root,
            self.catalog.clone(),
            1 << 40,
            self.rt.handle().clone(),
        )
        .unwrap()
    }

    fn upload_all(&self, src: &MemSource) {
        while self.store.pending_uploads() > 0 {
            let key = self.rt.block_on(self.store.next_upload());
            let (chunk, data) = match self.store.upload_payload(key).unwrap() {
                UploadPayload::Ready(chunk, data) => (chunk, data),
                // Revoked since it was queued.
                UploadPayload::Gone => continue,
                UploadPayload::Damaged => panic!("chunk {key} is damaged"),
            };
            assert_eq!(*blake3::hash(&data).as_bytes(), chunk.hash);
            src.chunks.lock().unwrap().insert(key, data);
            assert!(self.store.mark_uploaded(key, &chunk.object_id).unwrap());
        }
    }
}

#[test]
fn blocks_become_complete_chunks_and_read_back() {
    let total = 3 * CHUNK_LEN + 12345;
    let f = fixture(total);
    let g = f.store.geometry(f.id).unwrap();
    // Pieces 0 and 1 cover [0, 1.5 MiB): chunk 0 complete, chunk 1 not yet.
    f.download(0..2);
    let chunks = f.catalog.chunks(f.id).unwrap();
    assert_eq!(chunks.len(), 1, "a partial chunk has no row");
    assert_eq!(
        (chunks[0].index, chunks[0].state),
        (0, ChunkState::Complete)
    );
    assert_eq!(
        chunks[0].hash.unwrap(),
        *blake3::hash(&f.data[..CHUNK_LEN as usize]).as_bytes()
    );
    assert_eq!(f.store.pending_uploads(), 1);
    assert_eq!(&f.read(100..200_000).unwrap()[..], &f.data[100..200_000]);
    match f.read(0..2 * PIECE + 1) {
        Err(StoreError::NotVerified { missing, .. }) => assert_eq!(missing, vec![PieceIndex(2)]),
        other => panic!("expected NotVerified, got {other:?}"),
    }
    f.download(2..g.num_pieces());
    assert!(f.store.is_complete(f.id));
    assert_eq!(&f.read(0..total).unwrap()[..], &f.data[..]);
    assert_eq!(
        f.catalog.verified_pieces(f.id).unwrap().len() as u32,
        g.num_pieces()
    );
    let s = f.store.torrent_stats(f.id).unwrap();
    assert_eq!((s.chunks_complete, s.chunks_local), (4, 4));
    assert_eq!(s.bytes_verified, total);
}

/// Blocks of a chunk go to its file kept open; a file deleted under a download (its
/// piece then fails its hash) is created afresh when the piece's blocks come again.
#[test]
fn a_chunk_file_deleted_mid_download_is_written_afresh_after_its_piece_fails() {
    let total = 2 * CHUNK_LEN;
    let f = fixture(total);
    let uid = hex::encode(f.catalog.torrent(f.id).unwrap().uid);
    let file0 = f.root.join(&uid).join("0");
    let write = |range: std::ops::Range<u64>| {
        for off in range.step_by(16384) {
            let end = (off + 16384).min(total) as usize;
            f.store
                .write(f.id, off, &f.data[off as usize..end])
                .unwrap();
        }
    };
    write(0..PIECE / 2);
    std::fs::remove_file(&file0).unwrap();
    write(PIECE / 2..PIECE);
    assert!(
        !file0.exists(),
        "the rest went to the kept-open (deleted) file"
    );
    // libtorrent hashes the piece (a hole where the deleted blocks were): it fails.
    f.store.piece_failed(f.id, PieceIndex(0));
    write(0..PIECE);
    assert_eq!(
        std::fs::read(&file0).unwrap(),
        &f.data[..PIECE as usize],
        "the piece written again is in the file"
    );
    f.download(0..f.store.geometry(f.id).unwrap().num_pieces());
    assert_eq!(&f.read(0..total).unwrap()[..], &f.data[..]);
}

/// The uploader gets a chunk's file as its check left it; a file changed since is
/// hashed again: uploaded if its bytes are still right, damaged (never uploaded) if not.
#[test]
fn a_chunk_changed_after_its_check_is_not_uploaded() {
    let total = 3 * CHUNK_LEN;
    for alter in [false, true] {
        let f = fixture(total);
        let uid = hex::encode(f.catalog.torrent(f.id).unwrap().uid);
        f.download(0..f.store.geometry(f.id).unwrap().num_pieces());
        let chunk =
            |c: u64| f.data[(c * CHUNK_LEN) as usize..((c + 1) * CHUNK_LEN) as usize].to_vec();
        // The last chunk queued: rewritten with the bytes it had (a new stamp), or altered.
        let mut bytes = chunk(2);
        if alter {
            bytes[12345] ^= 0x40;
        }
        std::fs::write(f.root.join(&uid).join("2"), &bytes).unwrap();
        let mut seen = HashMap::new();
        while f.store.pending_uploads() > 0 {
            let key = f.rt.block_on(f.store.next_upload());
            let got = match f.store.upload_payload(key).unwrap() {
                UploadPayload::Ready(_, data) => Some(data == chunk(u64::from(key.index.0))),
                UploadPayload::Damaged => None,
                UploadPayload::Gone => panic!("chunk {key} gone"),
            };
            seen.insert(key.index.0, got);
        }
        assert_eq!((seen[&0], seen[&1]), (Some(true), Some(true)));
        if alter {
            assert_eq!(seen[&2], None, "an altered chunk was uploaded");
        } else {
            assert_eq!(
                seen[&2],
                Some(true),
                "a rewritten, intact chunk was refused"
            );
        }
    }
}

#[test]
fn a_range_is_readable_now_only_when_verified_and_local() {
    let total = 4 * CHUNK_LEN;
    let f = fixture(total);
    let src = Arc::new(MemSource::default());
    f.store.set_source(src.clone());
    assert!(!f.store.readable_now(f.id, 0..100));
    f.download(0..2);
    assert!(f.store.readable_now(f.id, 0..2 * PIECE));
    // One byte of a piece not downloaded yet, past the end, empty, unknown torrent.
    assert!(!f.store.readable_now(f.id, 0..2 * PIECE + 1));
    assert!(!f.store.readable_now(f.id, total - 1..total + 1));
    assert!(!f.store.readable_now(f.id, 5..5));
    assert!(!f.store.readable_now(TorrentId(99), 0..100));
    f.download(2..f.store.geometry(f.id).unwrap().num_pieces());
    f.upload_all(&src);
    assert!(f.store.readable_now(f.id, 0..total));
    // Evicted: verified but in the remote, so a read would wait for a fetch.
    f.store.evict_all();
    assert!(!f.store.readable_now(f.id, 0..100));
    assert_eq!(&f.read(0..100).unwrap()[..], &f.data[..100]);
    assert!(f.store.readable_now(f.id, 0..100));
    assert!(!f.store.readable_now(f.id, 0..CHUNK_LEN + 1));
}

#[test]
fn after_a_restart_read_ahead_hashes_local_chunks_before_their_reader() {
    let total = 3 * CHUNK_LEN;
    let (f, src) = uploaded_fixture(total);
    f.store.shutdown().unwrap();
    let uid = hex::encode(f.catalog.torrent(f.id).unwrap().uid);
    // Damaged while the daemon was down, same length.
    std::fs::write(f.root.join(&uid).join("1"), vec![3u8; CHUNK_LEN as usize]).unwrap();
    let store = f.reopen();
    store.register_torrent(f.id).unwrap();
    store.set_source(src.clone());
    let key = |c| ChunkKey::new(f.id, c);
    for c in 0..3 {
        assert!(store
            .prefetch_chunk(key(c), Wanted::Ahead)
            .unwrap()
            .is_none());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.checking.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the checks never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Good chunks are hashed and in memory before anyone reads; the damaged one was
    // found without a read, and is fetched again when read.
    assert!(store.hot_get(key(0)).is_some() && store.hot_get(key(2)).is_some());
    assert!(store.hot_get(key(1)).is_none());
    assert_eq!(store.integrity_stats().damaged_local_chunks, 1);
    let s = store.clone();
    let got =
        f.rt.block_on(async move { s.read_verified(f.id, 0..total).await })
            .unwrap();
    assert_eq!(&got[..], &f.data[..]);
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
}

#[test]
fn read_ahead_loads_its_group_of_checked_chunks_into_memory_but_not_changed_or_cached_ones() {
    let total = 6 * CHUNK_LEN;
    let (f, src) = uploaded_fixture(total);
    let uid = hex::encode(f.catalog.torrent(f.id).unwrap().uid);
    let file = |c: u64| f.root.join(&uid).join(c.to_string());
    if crate::direct::open(&file(0)).unwrap().is_none() {
        eprintln!("no direct I/O in {}: nothing to check", f.root.display());
        return;
    }
    let chunk = |c: u64| &f.data[(c * CHUNK_LEN) as usize..((c + 1) * CHUNK_LEN) as usize];
    // On the disk only, as after a restart; chunk 3 stays in the page cache (a chunk just
    // fetched or downloaded), where it is read from, not loaded.
    for c in [0, 1, 2, 4, 5] {
        let f = std::fs::File::open(file(c)).unwrap();
        f.sync_all().unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: advice on an open descriptor.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    let cached_seen = {
        let f3 = std::fs::File::open(file(3)).unwrap();
        crate::direct::cached_pages(&f3).is_some_and(|n| n > 0)
    };
    // Rewritten since its check (the same bytes): not the file the check vouched for.
    std::fs::write(file(2), chunk(2)).unwrap();
    let key = |c| ChunkKey::new(f.id, c);
    assert!(f
        .store
        .prefetch_chunk(key(1), Wanted::Ahead)
        .unwrap()
        .is_none());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f.store.checking.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the load never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The aligned group of chunk 1 is chunks 0-3: the unchanged ones only on the disk
    // are in memory.
    for c in [0, 1] {
        let got = f.store.loaded_get(key(c as u32)).expect("not loaded");
        assert_eq!(&got[..], chunk(c), "chunk {c}");
    }
    assert_eq!(f.store.loaded_get(key(3)).is_none(), cached_seen);
    for c in [2, 4, 5] {
        assert!(f.store.loaded_get(key(c)).is_none(), "chunk {c} loaded");
    }
    // Their reads are answered from memory: the files are not read again (garbage
    // there now would be found by the chunk's hash).
    for c in [0, 1] {
        std::fs::write(file(c), vec![0xA5; CHUNK_LEN as usize]).unwrap();
    }
    assert_eq!(
        &f.read(0..4 * CHUNK_LEN).unwrap()[..],
        &f.data[..4 * CHUNK_LEN as usize]
    );
    assert_eq!(f.store.integrity_stats().damaged_local_chunks, 0);
    assert_eq!(src.fetches.load(Ordering::SeqCst), 0);
    // Chunk 2 was hashed by its reader and is trusted from now on.
    assert!(f.store.readable_now(f.id, 2 * CHUNK_LEN..3 * CHUNK_LEN));
    // Chunk 3 was just read from its file (kept open, in the page cache): asked for
    // again, it is not even queued for a load.
    if cached_seen {
        assert!(f.store.cached_now(key(3)));
        assert!(!f.store.cached_now(key(4)), "never opened");
        assert!(f
            .store
            .prefetch_chunk(key(3), Wanted::Ahead)
            .unwrap()
            .is_none());
        assert!(!f.store.checking.lock().unwrap().contains_key(&key(3)));
        assert!(f.store.loaded_get(key(3)).is_none());
    }
    // A file's head (read at once) and a peer's blocks are not loaded.
    assert!(f
        .store
        .prefetch_chunk(key(5), Wanted::Next)
        .unwrap()
        .is_none());
    assert!(f
        .store
        .prefetch_chunk(key(4), Wanted::Peer)
        .unwrap()
        .is_none());
    std::thread::sleep(Duration::from_millis(50));
    assert!(f.store.loaded_get(key(4)).is_none() && f.store.loaded_get(key(5)).is_none());
}

#[test]
fn memory_for_chunks_read_ahead_follows_the_read_ahead_window() {
    let f = fixture(CHUNK_LEN);
    let cap = |s: &Store| s.loaded.lock().unwrap().cap().get();
    assert_eq!(cap(&f.store), LOADED_CHUNKS);
    f.store.set_read_ahead_chunks(64);
    assert_eq!(cap(&f.store), 64 + read::LOAD_GROUP_CHUNKS as usize);
    f.store.set_read_ahead_chunks(0);
    assert_eq!(cap(&f.store), read::LOAD_GROUP_CHUNKS as usize);
}

#[test]
fn out_of_range_and_unknown_torrent_are_errors() {
    let f = fixture(CHUNK_LEN);
    assert!(matches!(
        f.store.write(f.id, CHUNK_LEN - 1, b"ab"),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        f.store.write(TorrentId(99), 0, b"ab"),
        Err(StoreError::UnknownTorrent(_))
    ));
}

#[test]
fn only_uploaded_chunks_are_evicted_and_fetch_is_single_flight() {
    let total = 4 * CHUNK_LEN;
    let f = fixture(total);
    let src = Arc::new(MemSource::default());
    f.store.set_source(src.clone());
    f.download(0..f.store.geometry(f.id).unwrap().num_pieces());
    f.store.set_limit_bytes(CHUNK_LEN);
    // Nothing is uploaded: the cache exceeds its limit rather than lose data.
    assert_eq!(f.store.stats().used_bytes, total);
    f.upload_all(&src);
    assert_eq!(f.store.stats().used_bytes, CHUNK_LEN);
    assert_eq!(
        std::fs::read_dir(
            f.root
                .join(hex::encode(f.catalog.torrent(f.id).unwrap().uid))
        )
        .unwrap()
        .count(),
        1
    );
    // Eight concurrent reads of an evicted chunk cause one fetch.
    let store = f.store.clone();
    let id = f.id;
    let results = f.rt.block_on(async move {
        let reads = (0..8).map(|i| {
            let s = store.clone();
            async move { s.read_verified(id, i * 1000..i * 1000 + 5000).await }
        });
        futures::future::join_all(reads).await
    });
    for (i, r) in results.into_iter().enumerate() {
        let i = i * 1000;
        assert_eq!(&r.unwrap()[..], &f.data[i..i + 5000]);
    }
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(&f.read(0..total).unwrap()[..], &f.data[..]);
    assert!(f.store.stats().used_bytes <= CHUNK_LEN);
}

#[test]
fn pinned_torrents_and_read_pins_are_never_evicted() {
    let total = 3 * CHUNK_LEN;
    let f = fixture(total);
    let src = MemSource::default();
    f.download(0..f.store.geometry(f.id).unwrap().num_pieces());
    f.store.set_torrent_pinned(f.id, true);
    f.upload_all(&src);
    f.store.set_limit_bytes(0);
    assert_eq!(
        f.store.stats().used_bytes,
        total,
        "seeding torrent is pinned"
    );
    let guard = f.store.pin_present(ChunkKey::new(f.id, 1)).unwrap();
    f.store.set_torrent_pinned(f.id, false);
    assert_eq!(
        f.store.stats().used_bytes,
        CHUNK_LEN,
        "read pin holds chunk 1"
    );
    drop(guard);
    f.store.evict_to_limit();
    assert_eq!(f.store.stats().used_bytes, 0);
}

#[test]
fn altered_remote_chunk_is_an_error_not_data() {
    struct Liar;
    #[async_trait]
    impl ChunkSource for Liar {
        async fn fetch(&self, _c: &RemoteChunk) -> Result<Bytes, FetchError> {
            Ok(Bytes::from(vec![0; 10]))
        }
    }
    let f = fixture(CHUNK_LEN);
    f.download(0..f.store.geometry(f.id).unwrap().num_pieces());
    f.upload_all(&MemSource::default());
    f.store.set_source(Arc::new(Liar));
    f.store.evict_all();
    assert!(matches!(
        f.read(0..10),
        Err(StoreError::Fetch {
            error: FetchError::Integrity(_),
            ..
        })
    ));
}

#[test]
fn restart_rebuilds_accounting_and_forgets_lost_bytes() {
    let total = 4 * CHUNK_LEN;
    let f = fixture(total);
    let g = f.store.geometry(f.id).unwrap();
    f.download(0..g.num_pieces());
    let uid = hex::encode(f.catalog.torrent(f.id).unwrap().uid);
    f.store.shutdown().unwrap();
    // An orphan directory, a stray file, and a complete-but-lost chunk (2).
    std::fs::create_dir_all(f.root.join("deadbeef")).unwrap();
    std::fs::write(f.root.join(&uid).join("77"), b"x").unwrap();
    std::fs::write(f.root.join(&uid).join("1.tmp"), b"x").unwrap();
    std::fs::remove_file(f.root.join(&uid).join("2")).unwrap();
    let store = f.reopen();
    assert!(!f.root.join("deadbeef").exists());
    assert!(!f.root.join(&uid).join("77").exists());
    assert!(!f.root.join(&uid).join("1.tmp").exists());
    assert_eq!(store.stats().used_bytes, 3 * CHUNK_LEN);
    // Chunk 2 = [2M, 3M) overlaps pieces 2..=3 (768 KiB pieces): forgotten.
    let verified = store.verified_pieces(f.id).unwrap();
    let expect: Vec<bool> = (0..g.num_pieces()).map(|p| !(2..=3).contains(&p)).collect();
    assert_eq!(verified, expect);
    let chunks = states(&f.catalog, f.id, 4);
    assert_eq!(chunks[2], ChunkState::Partial);
    // Chunk 1 shares piece 2 with chunk 2, so it is no longer complete either.
    assert_eq!(chunks[1], ChunkState::Partial);
    assert_eq!(chunks[0], ChunkState::Complete);
    // Chunk 3 = [3M, 4M) holds pieces 4 and 5 only: untouched.
    assert_eq!(chunks[3], ChunkState::Complete);
    assert_eq!(store.pending_uploads(), 2);
}

#[test]
fn a_settled_torrent_with_nothing_local_is_loaded_only_when_used() {
    let total = 3 * CHUNK_LEN;
    let (f, src) = uploaded_fixture(total);
    f.catalog.set_seeding(f.id, false, false).unwrap();
    f.store.evict_all();
    f.store.shutdown().unwrap();
    let uid = hex::encode(f.catalog.torrent(f.id).unwrap().uid);
    let store = f.reopen();
    store.set_source(src.clone());
    // Nothing in memory for it, and its emptied directory is gone.
    assert!(store.torrent_ids().is_empty());
    assert!(!store.is_loaded(f.id));
    assert!(!f.root.join(&uid).exists());
    // Its counts and geometry are known without waking it.
    let stats = store.torrent_stats(f.id).unwrap();
    assert_eq!((stats.chunks_uploaded, stats.chunks_local), (3, 0));
    assert_eq!(stats.bytes_verified, total);
    assert!(store.is_complete(f.id));
    assert_eq!(store.geometry(f.id).unwrap().total_len(), total);
    assert!(!store.is_loaded(f.id));
    // A read loads it and is served from the remote, verified.
    assert_eq!(&f.read_from(&store, 0..total).unwrap()[..], &f.data[..]);
    assert!(store.is_loaded(f.id));
    let stats = store.torrent_stats(f.id).unwrap();
    assert_eq!(stats.chunks_uploaded, 3);
    assert_eq!(stats.pieces_verified, stats.pieces_total);
}

#[test]
fn an_untouched_torrent_is_loaded_by_its_first_write_and_a_local_one_at_start() {
    let total = 2 * CHUNK_LEN;
    let f = fixture(total);
    f.catalog.set_seeding(f.id, false, false).unwrap();
    f.store.shutdown().unwrap();
    let store = f.reopen();
    assert!(!store.is_loaded(f.id));
    assert_eq!(store.torrent_stats(f.id).unwrap().pieces_verified, 0);
    assert!(!store.is_complete(f.id));
    assert_eq!(store.verified_pieces(f.id).unwrap(), vec![false; 3]);
    assert!(store.is_loaded(f.id));
    // Written to now: not dormant at the next start (it has a local chunk).
    store.write(f.id, 0, &f.data[..16384]).unwrap();
    store.shutdown().unwrap();
    let store = f.reopen();
    assert_eq!(store.torrent_ids(), vec![f.id]);
}

#[test]
fn a_dormant_torrent_keeps_its_pin_when_woken() {
    let total = 2 * CHUNK_LEN;
    let (f, src) = uploaded_fixture(total);
    f.store.evict_all();
    // Seeding with pin, yet nothing local (paused, or evicted before it was pinned).
    f.catalog.set_seeding(f.id, true, true).unwrap();
    f.store.shutdown().unwrap();
    let store = f.reopen();
    store.set_source(src.clone());
    assert!(!store.is_loaded(f.id));
    store.set_torrent_pinned(f.id, true);
    assert!(!store.is_loaded(f.id), "pinning a dormant torrent wakes it");
    assert_eq!(&f.read_from(&store, 0..total).unwrap()[..], &f.data[..]);
    // The fetched chunks land in the cache pinned: nothing to evict.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.torrent_stats(f.id).unwrap().chunks_local < 2 {
        assert!(Instant::now() < deadline, "fetched chunks never landed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(store.evict_all(), 0);
    assert_eq!(store.stats().pinned_bytes, total);
}

#[test]
fn a_dormant_torrent_removed_is_gone_from_the_store() {
    let f = fixture(CHUNK_LEN);
    f.catalog.set_seeding(f.id, false, false).unwrap();
    f.store.shutdown().unwrap();
    let store = f.reopen();
    assert!(store.torrent_stats(f.id).is_some());
    store.remove_torrent(f.id).unwrap();
    assert!(store.torrent_stats(f.id).is_none());
    assert!(!store.is_loaded(f.id));
}

#[test]
fn pad_only_chunks_are_complete_and_survive_a_restart() {
    // [a: 100 B][pad: 2 MiB + 200 B][b: 100 B] with one 4 MiB piece: chunk 1 holds only
    // pad bytes, which libtorrent never writes.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let catalog = Arc::new(Catalog::open(&dir.path().join("bae.db")).unwrap());
    let id = catalog
        .add_torrent(&NewTorrent {
            info_hash_v1: Some([2; 20]),
            name: "padded".into(),
            ..Default::default()
        })
        .unwrap();
    let pad = 2 * CHUNK_LEN + 200;
    let total = 100 + pad + 100;
    let file = |off: u64, len: u64, pad: bool| FileRecord {
        path: vec!["f".into()],
        stream_offset: off,
        len,
        pad,
        mtime: 0,
    };
    let layout = Layout {
        piece_len: 4 * CHUNK_LEN,
        total_len: total,
        files: vec![
            file(0, 100, false),
            file(100, pad, true),
            file(100 + pad, 100, false),
        ],
    };
    catalog.set_layout(id, &layout, None, None).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(&root, catalog.clone(), 1 << 40, rt.handle().clone()).unwrap();
    store.register_torrent(id).unwrap();
    store.write(id, 0, &[7; 100]).unwrap();
    store.write(id, 100 + pad, &[9; 100]).unwrap();
    store.pieces_verified(id, &[PieceIndex(0)]);
    store.flush().unwrap();
    let g = store.geometry(id).unwrap();
    assert!(states(&catalog, id, g.num_chunks())
        .iter()
        .all(|&c| c == ChunkState::Complete));
    let s = store.clone();
    let mut buf = vec![1u8; CHUNK_LEN as usize];
    std::thread::spawn(move || s.read_raw_blocking(id, CHUNK_LEN, &mut buf).map(|_| buf))
        .join()
        .unwrap()
        .map(|buf| assert!(buf.iter().all(|&b| b == 0)))
        .unwrap();
    store.shutdown().unwrap();
    drop(store);
    let store = Store::open(&root, catalog.clone(), 1 << 40, rt.handle().clone()).unwrap();
    assert_eq!(store.verified_pieces(id).unwrap(), vec![true]);
    assert_eq!(store.pending_uploads(), 3);
}

#[test]
fn a_chunk_is_recorded_complete_only_with_all_its_pieces_durable() {
    // Chunk 0 = [0, 1 MiB) holds pieces 0 and 1 (768 KiB pieces). Piece 1 is verified in
    // memory but not yet queued when a batch with piece 0 commits (the interleaving a
    // flush between the two steps of `pieces_verified` allows): chunk 0 must stay
    // partial until piece 1 itself is committed.
    let f = fixture(2 * CHUNK_LEN);
    let g = f.store.geometry(f.id).unwrap();
    for p in 0..2 {
        let r = g.piece_range(PieceIndex(p));
        f.store
            .write(f.id, r.start, &f.data[r.start as usize..r.end as usize])
            .unwrap();
    }
    {
        let mut st = f.store.lock();
        let t = st.torrents.get_mut(&f.id).unwrap();
        t.verified.insert(1);
    }
    f.store.pieces_verified(f.id, &[PieceIndex(0)]);
    f.store.flush().unwrap();
    assert_eq!(states(&f.catalog, f.id, 1)[0], ChunkState::Partial);
    assert_eq!(f.catalog.verified_pieces(f.id).unwrap(), vec![0]);
    // The second half of that `pieces_verified` call: piece 1 is queued.
    f.store.pending.lock().unwrap().push((f.id, 1));
    f.store.flush().unwrap();
    assert_eq!(states(&f.catalog, f.id, 1)[0], ChunkState::Complete);
}

#[test]
fn a_damaged_complete_chunk_is_revoked_and_an_uploaded_one_fetched_again() {
    let total = 3 * CHUNK_LEN;
    let f = fixture(total);
    let src = Arc::new(MemSource::default());
    f.store.set_source(src.clone());
    let mut revoked = f.store.take_revocations().unwrap();
    f.download(0..f.store.geometry(f.id).unwrap().num_pieces());
    let uid = hex::encode(f.catalog.torrent(f.id).unwrap().uid);
    // Chunk 2 = [2M, 3M) holds pieces 2 (from 1.5M) and 3: not uploaded, then altered.
    std::fs::write(f.root.join(&uid).join("2"), vec![1u8; 100]).unwrap();
    match f.read(2 * CHUNK_LEN..2 * CHUNK_LEN + 10) {
        Err(StoreError::NotVerified { missing, .. }) => {
            assert_eq!(missing, vec![PieceIndex(2)])
        }
        other => panic!("damaged bytes must not be served: {other:?}"),
    }
    assert_eq!(revoked.try_recv().ok(), Some(f.id));
    assert_eq!(f.catalog.verified_pieces(f.id).unwrap(), vec![0, 1]);
    // Chunk 1 shared piece 2: it is partial again too, and gone from the upload queue.
    let chunks = states(&f.catalog, f.id, 3);
    assert_eq!(chunks[1], ChunkState::Partial);
    assert_eq!(chunks[2], ChunkState::Partial);
    f.upload_all(&src);
    assert_eq!(states(&f.catalog, f.id, 1)[0], ChunkState::Uploaded);
    // An uploaded chunk with a damaged file is fetched again: right bytes.
    std::fs::write(f.root.join(&uid).join("0"), vec![9u8; CHUNK_LEN as usize]).unwrap();
    assert_eq!(&f.read(0..1000).unwrap()[..], &f.data[..1000]);
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(f.store.integrity_stats().damaged_local_chunks, 2);
}

#[test]
fn a_chunk_file_kept_open_is_not_trusted_after_a_write_and_is_closed_when_evicted() {
    use std::os::unix::fs::FileExt;
    let total = 2 * CHUNK_LEN;
    let (f, src) = uploaded_fixture(total);
    let key = ChunkKey::new(f.id, 0);
    let kept = |s: &Store| s.open_files.lock().unwrap().contains(&key);
    // The first read hashes chunk 0; its file is kept open for the next.
    assert_eq!(&f.read(0..1000).unwrap()[..], &f.data[..1000]);
    assert!(kept(&f.store));
    assert_eq!(&f.read(4096..8192).unwrap()[..], &f.data[4096..8192]);
    // Altered in place (same inode, same length) while kept open: the change time says
    // so, and the right bytes come from the remote instead. The pause puts the write in
    // a later tick of the kernel's coarse clock than the check.
    std::thread::sleep(Duration::from_millis(20));
    let uid = hex::encode(f.catalog.torrent(f.id).unwrap().uid);
    let path = f.root.join(&uid).join("0");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(b"altered", 5000)
        .unwrap();
    assert_eq!(&f.read(4096..8192).unwrap()[..], &f.data[4096..8192]);
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(f.store.integrity_stats().damaged_local_chunks, 1);
    // Eviction closes a kept file before deleting it (else its blocks stay allocated).
    let second = ChunkKey::new(f.id, 1);
    let at = CHUNK_LEN as usize + 10;
    assert_eq!(
        &f.read(at as u64..at as u64 + 10).unwrap()[..],
        &f.data[at..at + 10]
    );
    assert!(f.store.open_files.lock().unwrap().contains(&second));
    f.store.evict_all();
    assert!(!f.store.open_files.lock().unwrap().contains(&second));
    assert!(!f.root.join(&uid).join("1").exists());
    assert_eq!(
        &f.read(CHUNK_LEN..total).unwrap()[..],
        &f.data[CHUNK_LEN as usize..]
    );
    assert_eq!(src.fetches.load(Ordering::SeqCst), 2);
}

#[test]
fn a_fetched_chunk_serves_its_read_even_when_the_cache_is_full_of_pinned_chunks() {
    let total = 2 * CHUNK_LEN;
    let (f, src) = uploaded_fixture(total);
    f.store.evict_all();
    // A limit of zero: every fetched file is evicted the moment it lands.
    f.store.set_limit_bytes(0);
    for _ in 0..5 {
        assert_eq!(&f.read(0..total).unwrap()[..], &f.data[..]);
    }
    assert_eq!(src.fetches.load(Ordering::SeqCst), 2, "one fetch per chunk");
}

/// A source that holds every fetch until released, noting the chunks asked for.
struct Held {
    inner: Arc<MemSource>,
    release: tokio::sync::Semaphore,
    started: Mutex<Vec<u32>>,
    /// Each fetch's chunk and the parts it was asked for in.
    parts: Mutex<Vec<(u32, usize)>>,
}

impl Held {
    fn new(inner: Arc<MemSource>) -> Arc<Held> {
        Arc::new(Held {
            inner,
            release: tokio::sync::Semaphore::new(0),
            started: Mutex::new(Vec::new()),
            parts: Mutex::new(Vec::new()),
        })
    }

    fn started(&self) -> Vec<u32> {
        self.started.lock().unwrap().clone()
    }

    fn wait_started(&self, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.started.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {:?} started",
                self.started()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        self.started()
    }
}

#[async_trait]
impl ChunkSource for Held {
    async fn fetch(&self, chunk: &RemoteChunk) -> Result<Bytes, FetchError> {
        self.fetch_parts(chunk, 1).await
    }

    async fn fetch_parts(&self, chunk: &RemoteChunk, parts: usize) -> Result<Bytes, FetchError> {
        self.parts.lock().unwrap().push((chunk.key.index.0, parts));
        self.started.lock().unwrap().push(chunk.key.index.0);
        let _go = self.release.acquire().await;
        self.inner.fetch(chunk).await
    }
}

#[test]
fn only_a_lone_readers_fetch_is_asked_for_in_parts() {
    let total = 4 * CHUNK_LEN;
    let (f, held) = evicted_behind(Held::new, total);
    let (store, id) = (f.store.clone(), f.id);
    // A file's head on open, no other reader waiting: in parts.
    let head = f.rt.spawn(
        store
            .prefetch_chunk(ChunkKey::new(id, 0), Wanted::Next)
            .unwrap()
            .unwrap(),
    );
    held.wait_started(1);
    // A second reader while it runs: whole (the link is busy).
    let s = store.clone();
    let read =
        f.rt.spawn(async move { s.read_verified(id, 3 * CHUNK_LEN..3 * CHUNK_LEN + 10).await });
    held.wait_started(2);
    held.release.add_permits(2);
    f.rt.block_on(head).unwrap().unwrap();
    let got = f.rt.block_on(read).unwrap().unwrap();
    assert_eq!(
        &got[..],
        &f.data[3 * CHUNK_LEN as usize..3 * CHUNK_LEN as usize + 10]
    );
    // A fetch ahead of the readers: whole.
    let ahead = f.rt.spawn(
        store
            .prefetch_chunk(ChunkKey::new(id, 1), Wanted::Ahead)
            .unwrap()
            .unwrap(),
    );
    held.wait_started(3);
    held.release.add_permits(1);
    f.rt.block_on(ahead).unwrap().unwrap();
    assert_eq!(
        *held.parts.lock().unwrap(),
        vec![(0, read::IDLE_DEMAND_PARTS), (3, 1), (1, 1)]
    );
}

/// A complete torrent of `total` bytes, uploaded and evicted, fetched back through the
/// source `wrap` makes of the chunks.
fn evicted_behind<S: ChunkSource>(
    wrap: impl FnOnce(Arc<MemSource>) -> Arc<S>,
    total: u64,
) -> (Fixture, Arc<S>) {
    let f = fixture(total);
    let mem = Arc::new(MemSource::default());
    let source = wrap(mem.clone());
    f.store.set_source(source.clone());
    f.download(0..f.store.geometry(f.id).unwrap().num_pieces());
    f.upload_all(&mem);
    f.store.evict_all();
    (f, source)
}

#[test]
fn a_running_fetch_says_when_it_began_and_is_forgotten_when_done() {
    let total = 2 * CHUNK_LEN;
    let (f, held) = evicted_behind(Held::new, total);
    let before = Instant::now();
    let (store, key) = (f.store.clone(), ChunkKey::new(f.id, 1));
    let fetch =
        f.rt.spawn(store.prefetch_chunk(key, Wanted::Ahead).unwrap().unwrap());
    let second = CHUNK_LEN..total;
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.store.fetching_since(f.id, second.clone()).is_none() {
        assert!(Instant::now() < deadline, "the fetch never showed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let since = f.store.fetching_since(f.id, second.clone()).unwrap();
    assert!(since >= before);
    // A range over both chunks joins the same fetch; one over the first alone none.
    assert_eq!(f.store.fetching_since(f.id, 0..total), Some(since));
    assert_eq!(f.store.fetching_since(f.id, 0..CHUNK_LEN), None);
    assert_eq!(f.store.fetching_since(f.id, 5..5), None);
    held.release.add_permits(1);
    f.rt.block_on(fetch).unwrap().unwrap();
    assert_eq!(f.store.fetching_since(f.id, second), None);
}

#[test]
fn fetches_ahead_of_readers_wait_for_those_readers_wait_on() {
    let total = 4 * CHUNK_LEN;
    let (f, held) = evicted_behind(Held::new, total);
    let key = |c| ChunkKey::new(f.id, c);
    // A file's head on open (to be read next) goes first; the rest of the read-ahead
    // asked for at the same moment holds back.
    let head = f.rt.spawn(
        f.store
            .prefetch_chunk(key(0), Wanted::Next)
            .unwrap()
            .unwrap(),
    );
    let ahead = f.rt.spawn(
        f.store
            .prefetch_chunk(key(1), Wanted::Ahead)
            .unwrap()
            .unwrap(),
    );
    let later = f.rt.spawn(
        f.store
            .prefetch_chunk(key(2), Wanted::Ahead)
            .unwrap()
            .unwrap(),
    );
    assert_eq!(held.wait_started(1), vec![0]);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(held.started(), vec![0], "a fetch ahead did not wait");
    // A reader now waits for chunk 1: its fetch goes at once.
    let store = f.store.clone();
    let id = f.id;
    let read =
        f.rt.spawn(async move { store.read_verified(id, CHUNK_LEN..CHUNK_LEN + 10).await });
    assert_eq!(held.wait_started(2), vec![0, 1]);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(held.started(), vec![0, 1], "chunk 2 did not wait");
    // And none waits for longer than the bound, however long the demand takes.
    assert_eq!(held.wait_started(3), vec![0, 1, 2]);
    held.release.add_permits(3);
    f.rt.block_on(head).unwrap().unwrap();
    f.rt.block_on(ahead).unwrap().unwrap();
    f.rt.block_on(later).unwrap().unwrap();
    let got = f.rt.block_on(read).unwrap().unwrap();
    assert_eq!(
        &got[..],
        &f.data[CHUNK_LEN as usize..CHUNK_LEN as usize + 10]
    );
}

/// A source whose first fetch never answers (a request the remote dropped) and whose
/// later fetches do.
struct FirstHangs {
    inner: Arc<MemSource>,
    calls: AtomicUsize,
}

#[async_trait]
impl ChunkSource for FirstHangs {
    async fn fetch(&self, chunk: &RemoteChunk) -> Result<Bytes, FetchError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            std::future::pending::<()>().await;
        }
        self.inner.fetch(chunk).await
    }
}

#[test]
fn a_reader_behind_a_fetch_that_never_answers_tries_again_alongside_it() {
    let total = CHUNK_LEN;
    let (f, src) = evicted_behind(
        |inner| {
            Arc::new(FirstHangs {
                inner,
                calls: AtomicUsize::new(0),
            })
        },
        total,
    );
    f.store.set_hedge_floor(Duration::from_millis(200));
    let began = Instant::now();
    // The first reader's attempt hangs; it starts a second one and is served by it.
    let (store, id) = (f.store.clone(), f.id);
    let read = f.rt.block_on(async move {
        tokio::time::timeout(Duration::from_secs(10), store.read_verified(id, 0..4096)).await
    });
    let read = read.expect("the read waited for the hung attempt");
    assert_eq!(&read.unwrap()[..], &f.data[..4096]);
    assert!(began.elapsed() >= Duration::from_millis(200));
    assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    // The hung attempt is not waited for: the chunk is forgotten as in flight.
    assert_eq!(f.store.fetching_since(f.id, 0..total), None);
    assert_eq!(&f.read(0..total).unwrap()[..], &f.data[..]);
}

#[test]
fn a_reader_gives_up_on_a_fetch_that_never_answers_after_its_hedges() {
    // Every attempt hangs: a reader still ends (by its caller's deadline), having made
    // no more than the bounded number of attempts.
    struct Hangs(AtomicUsize);
    #[async_trait]
    impl ChunkSource for Hangs {
        async fn fetch(&self, _: &RemoteChunk) -> Result<Bytes, FetchError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }
    }
    let (f, src) = evicted_behind(|_| Arc::new(Hangs(AtomicUsize::new(0))), CHUNK_LEN);
    f.store.set_hedge_floor(Duration::from_millis(50));
    let store = f.store.clone();
    let id = f.id;
    let read = f.rt.block_on(async move {
        tokio::time::timeout(Duration::from_secs(2), store.read_verified(id, 0..10)).await
    });
    assert!(
        read.is_err(),
        "a read of a chunk the remote never sends ended"
    );
    assert_eq!(
        src.0.load(Ordering::SeqCst),
        3,
        "one attempt and two hedges"
    );
}

#[test]
fn a_peers_queued_reads_start_their_chunks_fetches_together_up_to_a_bound() {
    let ahead = super::read::PEER_FETCHES_AHEAD;
    let n = ahead as u64 + 2;
    let (f, held) = evicted_behind(Held::new, n * CHUNK_LEN);
    let block = |c: u64| c * CHUNK_LEN + 16384..c * CHUNK_LEN + 32768;
    // Two blocks a peer asked for, in no order: both fetches start before any read,
    // each with the rest of its 4-chunk extent (2 and 3; 5, 6 and 7).
    f.store.prefetch_for_peer(f.id, block(2));
    f.store.prefetch_for_peer(f.id, block(4));
    let mut started = held.wait_started(6);
    started.sort_unstable();
    assert_eq!(started, vec![2, 3, 4, 5, 6, 7]);
    // The last extent is cut at the torrent's end.
    assert_eq!(n, 18);
    f.store.prefetch_for_peer(f.id, block(16));
    let mut started = held.wait_started(8);
    started.sort_unstable();
    assert_eq!(started, vec![2, 3, 4, 5, 6, 7, 16, 17]);
    // A long queue: no more than the bound at once.
    for c in 0..n {
        f.store.prefetch_for_peer(f.id, block(c));
    }
    held.wait_started(ahead);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        held.started().len(),
        ahead,
        "more fetches ahead than the bound"
    );
    held.release.add_permits(4 * n as usize);
    // The reads that follow join those fetches: right bytes, one fetch per chunk.
    assert_eq!(&f.read(0..n * CHUNK_LEN).unwrap()[..], &f.data[..]);
    let mut started = held.started();
    started.sort_unstable();
    assert_eq!(started, (0..n as u32).collect::<Vec<_>>());
}

/// Every chunk's recorded state (a partial chunk has no row).
fn states(catalog: &Catalog, id: TorrentId, n: u32) -> Vec<ChunkState> {
    (0..n)
        .map(|c| {
            catalog
                .chunk(ChunkKey::new(id, c))
                .unwrap()
                .map_or(ChunkState::Partial, |r| r.state)
        })
        .collect()
}

/// A peer's read on libtorrent's network thread: answered there only from verified
/// bytes at hand (a checked local file in the page cache, or a fetched chunk in
/// memory); anything else is `None`, for a worker, and starts nothing.
#[test]
fn a_peer_read_is_answered_at_once_only_from_bytes_at_hand() {
    use std::os::unix::fs::FileExt;
    let total = 3 * CHUNK_LEN;
    let (f, src) = uploaded_fixture(total);
    let now = |range: std::ops::Range<u64>| {
        let mut buf = vec![0xEEu8; (range.end - range.start) as usize];
        f.store
            .read_raw_now(f.id, range.start, &mut buf)
            .map(|r| r.map(|()| buf))
    };
    let right =
        |range: std::ops::Range<u64>| f.data[range.start as usize..range.end as usize].to_vec();
    // Just downloaded and committed: local, checked, in the page cache, but no file is
    // open yet (opening one may read the disk): a worker's read opens and keeps it.
    let block = 16_384..32_768;
    assert!(now(block.clone()).is_none());
    let mut buf = vec![0u8; 2 * CHUNK_LEN as usize];
    f.store.read_raw_blocking(f.id, 0, &mut buf).unwrap();
    assert_eq!(now(block.clone()).unwrap().unwrap(), right(block));
    let across = CHUNK_LEN - 8192..CHUNK_LEN + 8192;
    assert_eq!(now(across.clone()).unwrap().unwrap(), right(across));

    // Evicted: not at hand, and no fetch is started from here.
    f.store.evict_all();
    let in_1 = CHUNK_LEN + 4096..CHUNK_LEN + 20_480;
    assert!(now(in_1.clone()).is_none());
    assert_eq!(src.fetches.load(Ordering::SeqCst), 0);
    // A worker's read fetches it; the fetched bytes are then at hand in memory.
    let mut buf = vec![0u8; (in_1.end - in_1.start) as usize];
    f.store
        .read_raw_blocking(f.id, in_1.start, &mut buf)
        .unwrap();
    assert_eq!(buf, right(in_1.clone()));
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    assert_eq!(now(in_1.clone()).unwrap().unwrap(), right(in_1));

    // A local file altered since it was checked must be hashed first: not here.
    let (f, _src) = uploaded_fixture(total);
    std::thread::sleep(Duration::from_millis(20));
    let uid = hex::encode(f.catalog.torrent(f.id).unwrap().uid);
    std::fs::OpenOptions::new()
        .write(true)
        .open(f.root.join(&uid).join("2"))
        .unwrap()
        .write_all_at(b"altered", 100)
        .unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(f
        .store
        .read_raw_now(f.id, 2 * CHUNK_LEN, &mut buf)
        .is_none());
    assert_eq!(f.store.integrity_stats().damaged_local_chunks, 0);

    // Pieces 0 and 1 (768 KiB each) make chunk 0 complete and chunk 1 partial. A piece
    // not verified yet is never served from here, nor a partial chunk's file (opened on
    // every read).
    let f = fixture(total);
    f.download(0..2);
    let mut buf = vec![0u8; 4096];
    f.store.read_raw_blocking(f.id, 0, &mut buf).unwrap();
    assert!(f.store.read_raw_now(f.id, 0, &mut buf).is_some());
    assert!(f
        .store
        .read_raw_now(f.id, CHUNK_LEN + 4096, &mut buf)
        .is_none());
    assert!(f
        .store
        .read_raw_now(f.id, 2 * PIECE + 4096, &mut buf)
        .is_none());
}
