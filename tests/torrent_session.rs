//! bae's libtorrent session beyond plain transfers: a peer sending corrupt blocks, the
//! import path (a torrent made by bae, data hashed once), pause/resume/remove, and a
//! session dropped mid-download then resumed from the store's verified pieces.

mod common;

use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use bae::model::TorrentId;
use bae::torrent::{
    create_torrent, parse_metainfo, AddOptions, Event, Session, SessionConfig, Source, TorrentError,
};
use common::swarm::{
    expected_stream, make_album, python_torrent, wait_event, FileStorage, PyPeer, PEER_DEADLINE,
};

const ALBUM: &[(&str, usize)] = &[
    ("01 - One.flac", 2_345_678),
    ("02 - Two.flac", 1_111_111),
    ("folder.jpg", 87_654),
];

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PEER_DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not in time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn corrupt_blocks_fail_their_hash_and_are_downloaded_again() {
    let tmp = tempfile::tempdir().unwrap();
    let album = make_album(&tmp.path().join("seed"), "Album", ALBUM, 11);
    let torrent_path = tmp.path().join("a.torrent");
    let (torrent, _) = python_torrent(&album, &torrent_path, 64 << 10, "v1");
    let meta = parse_metainfo(&torrent).unwrap();
    let liar = PyPeer::corrupt_seeder(&torrent_path);

    let storage = FileStorage::new(&tmp.path().join("store"));
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    let t = TorrentId(3);
    let opts = AddOptions {
        peers: vec![liar.addr()],
        ..AddOptions::default()
    };
    session.add(t, Source::Metainfo(torrent), opts).unwrap();
    let Event::HashFailed { piece, .. } = wait_event(&events, "hash failure", |e| {
        matches!(e, Event::HashFailed { .. })
    }) else {
        unreachable!()
    };
    wait_until("store told of the failed piece", || {
        storage.stats().failed_pieces.contains(&piece)
    });

    let seeder = PyPeer::seed(&torrent_path, &tmp.path().join("seed"));
    session.connect_peer(t, seeder.addr()).unwrap();
    wait_event(&events, "torrent finished", |e| {
        *e == Event::TorrentFinished { t }
    });
    assert!(
        storage.stream(t) == expected_stream(&album, &meta.layout),
        "store corrupted"
    );
    assert!(storage.verified(t).iter().all(|&v| v));
}

#[test]
fn imports_a_directory_hashes_it_once_and_seeds_it() {
    let tmp = tempfile::tempdir().unwrap();
    let album = make_album(&tmp.path().join("orig"), "Album", ALBUM, 5);
    let torrent = create_torrent(
        &album,
        Some(64 << 10),
        &["http://127.0.0.1:1/announce".into()],
    )
    .unwrap();
    let meta = parse_metainfo(&torrent).unwrap();
    assert!(
        meta.info_hash_v1().is_some() && meta.info_hash_v2().is_some(),
        "not hybrid"
    );
    assert_eq!(meta.name, "Album");
    assert!(
        meta.layout.files.iter().any(|f| !f.pad && f.mtime > 0),
        "no mtimes"
    );
    let torrent_path = tmp.path().join("a.torrent");
    std::fs::write(&torrent_path, &torrent).unwrap();

    let storage = FileStorage::new(&tmp.path().join("store"));
    let t = TorrentId(9);
    storage.prefill(t, expected_stream(&album, &meta.layout), false);
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    let opts = AddOptions {
        full_check: true,
        ..AddOptions::default()
    };
    session.add(t, Source::Metainfo(torrent), opts).unwrap();
    wait_event(&events, "checked", |e| *e == Event::TorrentChecked { t });
    assert!(
        storage.verified(t).iter().all(|&v| v),
        "store not told of the checked pieces"
    );
    assert_eq!(
        session.status(t).unwrap().pieces_have,
        meta.layout.num_pieces()
    );

    let bae_addr = std::net::SocketAddr::from(([127, 0, 0, 1], session.listen_port()));
    let out = tmp.path().join("leech");
    let mut leecher = PyPeer::leech(&torrent_path, &out, bae_addr);
    leecher.wait_line("DONE");
    for (rel, _) in ALBUM {
        let same = std::fs::read(out.join("Album").join(rel)).unwrap()
            == std::fs::read(album.join(rel)).unwrap();
        assert!(same, "{rel} differs");
    }
}

#[test]
fn pause_resume_remove_and_add_again() {
    let tmp = tempfile::tempdir().unwrap();
    let album = make_album(&tmp.path().join("orig"), "Album", ALBUM, 8);
    let (torrent, _) = python_torrent(&album, &tmp.path().join("a.torrent"), 256 << 10, "hybrid");
    let meta = parse_metainfo(&torrent).unwrap();
    let storage = FileStorage::new(&tmp.path().join("store"));
    let t = TorrentId(4);
    storage.prefill(t, expected_stream(&album, &meta.layout), true);
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();

    let paused = AddOptions {
        paused: true,
        ..AddOptions::default()
    };
    session
        .add(t, Source::Metainfo(torrent.clone()), paused.clone())
        .unwrap();
    assert!(matches!(
        session.add(t, Source::Metainfo(torrent.clone()), paused.clone()),
        Err(TorrentError::AlreadyAdded(_))
    ));
    assert!(session.status(t).unwrap().paused);
    session.resume(t).unwrap();
    assert!(!session.status(t).unwrap().paused);
    session.pause(t).unwrap();
    assert!(session.status(t).unwrap().paused);

    session.remove(t).unwrap();
    assert!(matches!(
        session.status(t),
        Err(TorrentError::UnknownTorrent(_))
    ));
    wait_until("storage closed", || storage.stats().closed == 1);
    // Added again, the store's verified pieces make it a seed without a recheck.
    session
        .add(t, Source::Metainfo(torrent), AddOptions::default())
        .unwrap();
    wait_until("seeding again", || {
        session.status(t).unwrap().pieces_have == meta.layout.num_pieces()
    });
    assert_eq!(
        storage.stats().bytes_read,
        0,
        "the data was read back: a recheck happened"
    );
}

#[test]
fn dropped_mid_download_then_resumes_from_verified_pieces() {
    let tmp = tempfile::tempdir().unwrap();
    let big: &[(&str, usize)] = &[("a.flac", 24 << 20), ("b.flac", 9_999_999)];
    let album = make_album(&tmp.path().join("seed"), "Album", big, 2);
    let torrent_path = tmp.path().join("a.torrent");
    let (torrent, _) = python_torrent(&album, &torrent_path, 256 << 10, "hybrid");
    let meta = parse_metainfo(&torrent).unwrap();
    let seeder = PyPeer::seed(&torrent_path, &tmp.path().join("seed"));
    let storage = FileStorage::new(&tmp.path().join("store"));
    let t = TorrentId(5);
    let opts = AddOptions {
        peers: vec![seeder.addr()],
        ..AddOptions::default()
    };

    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    session
        .add(t, Source::Metainfo(torrent.clone()), opts.clone())
        .unwrap();
    // Drop once a good part, but not all, of the torrent is verified.
    let mut finished = 0;
    wait_event(&events, "a quarter of the pieces", |e| {
        finished += u32::from(matches!(e, Event::PieceFinished { .. }));
        finished >= meta.layout.num_pieces() / 4
    });
    // Dropping must stop libtorrent and join every worker, even with transfers going on.
    let (done_tx, done_rx) = channel();
    std::thread::spawn(move || {
        drop(session);
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(PEER_DEADLINE)
        .expect("session drop did not finish");
    let verified_before = storage.verified(t).iter().filter(|&&v| v).count();
    eprintln!(
        "verified before the drop: {verified_before} of {}; {:?}",
        meta.layout.num_pieces(),
        storage.stats()
    );
    assert!(verified_before > 0 && verified_before < meta.layout.num_pieces() as usize);
    let written_before = storage.stats().bytes_written;

    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    session.add(t, Source::Metainfo(torrent), opts).unwrap();
    wait_event(&events, "torrent finished", |e| {
        *e == Event::TorrentFinished { t }
    });
    let (got, want) = (storage.stream(t), expected_stream(&album, &meta.layout));
    let bad: Vec<u64> = (0..meta.layout.num_pieces() as u64)
        .filter(|p| {
            let r = (p * meta.layout.piece_len) as usize
                ..(((p + 1) * meta.layout.piece_len).min(meta.layout.total_len)) as usize;
            got[r.clone()] != want[r]
        })
        .collect();
    assert!(
        bad.is_empty(),
        "pieces differ after resume: {bad:?}; {:?}",
        storage.stats()
    );
    let written_after = storage.stats().bytes_written - written_before;
    let not_verified_bytes = meta.layout.total_len - verified_before as u64 * meta.layout.piece_len;
    assert!(
        written_after <= not_verified_bytes,
        "verified pieces were downloaded again: {written_after} > {not_verified_bytes}"
    );
}

#[test]
fn failed_reads_do_not_stop_seeding() {
    let (storage, status) = seed_to_a_leecher(128 << 10, "hybrid", 13, |s| {
        s.fail_reads.store(3, std::sync::atomic::Ordering::SeqCst);
    });
    assert_eq!(
        storage.fail_reads.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the failing reads never happened"
    );
    assert!(!status.paused && status.error.is_none(), "{status:?}");
}

/// A storage that answers every peer read at once (`read_now`, on libtorrent's network
/// thread) serves a whole download that way: no read reaches the workers, and the
/// leecher's files are right.
#[test]
fn reads_answered_at_once_serve_a_whole_download() {
    use std::sync::atomic::Ordering::SeqCst;
    let (storage, _) = seed_to_a_leecher(64 << 10, "v1", 17, |s| {
        s.answer_now.store(true, SeqCst);
    });
    let total: u64 = ALBUM.iter().map(|(_, len)| *len as u64).sum();
    let blocks = total.div_ceil(16 << 10);
    assert!(
        storage.now_reads.load(SeqCst) >= blocks,
        "{} reads answered at once for {blocks} blocks",
        storage.now_reads.load(SeqCst)
    );
    assert_eq!(
        storage.stats.lock().unwrap().bytes_read,
        0,
        "reads reached the workers"
    );
}

/// Seeds an album (`piece`-sized pieces, torrent `mode`) from a [`FileStorage`] set up by
/// `setup` to a stock leecher, and checks every file the leecher got. Returns the
/// storage and the torrent's status after.
fn seed_to_a_leecher(
    piece: u64,
    mode: &str,
    seed: u64,
    setup: impl FnOnce(&FileStorage),
) -> (std::sync::Arc<FileStorage>, bae::torrent::TorrentStatus) {
    let tmp = tempfile::tempdir().unwrap();
    let album = make_album(&tmp.path().join("orig"), "Album", ALBUM, seed);
    let torrent_path = tmp.path().join("a.torrent");
    let (torrent, _) = python_torrent(&album, &torrent_path, piece, mode);
    let meta = parse_metainfo(&torrent).unwrap();
    let storage = FileStorage::new(&tmp.path().join("store"));
    let t = TorrentId(6);
    storage.prefill(t, expected_stream(&album, &meta.layout), true);
    setup(&storage);
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    session
        .add(t, Source::Metainfo(torrent), AddOptions::default())
        .unwrap();
    let bae_addr = std::net::SocketAddr::from(([127, 0, 0, 1], session.listen_port()));
    let mut leecher = PyPeer::leech(&torrent_path, &tmp.path().join("leech"), bae_addr);
    leecher.wait_line("DONE");
    for (rel, _) in ALBUM {
        let same = std::fs::read(tmp.path().join("leech/Album").join(rel)).unwrap()
            == std::fs::read(album.join(rel)).unwrap();
        assert!(same, "{rel} differs");
    }
    let status = session.status(t).unwrap();
    (storage, status)
}

/// A magnet's metadata, re-added after a restart as a .torrent, resumes from the store.
fn magnet_then_restart(mode: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let big: &[(&str, usize)] = &[("a.flac", 20 << 20), ("b.flac", 7_777_777)];
    let album = make_album(&tmp.path().join("seed"), "Album", big, 4);
    let torrent_path = tmp.path().join("a.torrent");
    let (torrent, magnet) = python_torrent(&album, &torrent_path, 256 << 10, mode);
    let meta = parse_metainfo(&torrent).unwrap();
    let seeder = PyPeer::seed(&torrent_path, &tmp.path().join("seed"));
    let storage = FileStorage::new(&tmp.path().join("store"));
    let t = TorrentId(12);
    let opts = AddOptions {
        peers: vec![seeder.addr()],
        ..AddOptions::default()
    };

    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    session
        .add(t, Source::Magnet(magnet), opts.clone())
        .unwrap();
    let Event::MetadataReceived { torrent_bytes, .. } = wait_event(&events, "metadata", |e| {
        matches!(e, Event::MetadataReceived { .. })
    }) else {
        unreachable!()
    };
    let mut finished = 0;
    wait_event(&events, "a quarter of the pieces", |e| {
        finished += u32::from(matches!(e, Event::PieceFinished { .. }));
        finished >= meta.layout.num_pieces() / 4
    });
    drop(session);
    let verified_before = storage.verified(t).iter().filter(|&&v| v).count();
    assert!(verified_before > 0 && verified_before < meta.layout.num_pieces() as usize);
    let written_before = storage.stats().bytes_written;

    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    session
        .add(t, Source::Metainfo(torrent_bytes), opts)
        .unwrap();
    wait_event(&events, "torrent finished", |e| {
        *e == Event::TorrentFinished { t }
    });
    assert!(storage.stream(t) == expected_stream(&album, &meta.layout));
    let written_after = storage.stats().bytes_written - written_before;
    let not_verified_bytes = meta.layout.total_len - verified_before as u64 * meta.layout.piece_len;
    assert!(
        written_after <= not_verified_bytes,
        "verified pieces were downloaded again: {written_after} > {not_verified_bytes}"
    );
}

#[test]
fn magnet_metadata_resumes_after_restart_hybrid() {
    magnet_then_restart("hybrid");
}

#[test]
fn magnet_metadata_resumes_after_restart_v2() {
    magnet_then_restart("v2");
}

/// A v2 torrent first added by magnet, once complete, seeds to a v2-only peer after a
/// restart: the torrent bytes bae keeps must carry the piece layers.
#[test]
fn a_v2_magnet_torrent_seeds_to_a_v2_peer_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let album = make_album(&tmp.path().join("seed"), "Album", ALBUM, 40);
    let torrent_path = tmp.path().join("a.torrent");
    let (_, magnet) = python_torrent(&album, &torrent_path, 64 << 10, "v2");
    let seeder = PyPeer::seed(&torrent_path, &tmp.path().join("seed"));
    let storage = FileStorage::new(&tmp.path().join("store"));
    let t = TorrentId(41);
    let opts = AddOptions {
        peers: vec![seeder.addr()],
        ..AddOptions::default()
    };
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    session.add(t, Source::Magnet(magnet), opts).unwrap();
    let mut kept = Vec::new();
    wait_event(&events, "torrent finished", |e| {
        if let Event::MetadataReceived { torrent_bytes, .. } = e {
            kept = torrent_bytes.clone();
        }
        *e == Event::TorrentFinished { t }
    });
    // The latest torrent bytes reported by then are what the daemon would keep.
    while let Ok(e) = events.try_recv() {
        if let Event::MetadataReceived { torrent_bytes, .. } = e {
            kept = torrent_bytes;
        }
    }
    drop(session);
    drop(seeder);

    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    session
        .add(t, Source::Metainfo(kept.clone()), AddOptions::default())
        .unwrap();
    let kept_path = tmp.path().join("kept.torrent");
    std::fs::write(&kept_path, &kept).unwrap();
    let bae_addr = std::net::SocketAddr::from(([127, 0, 0, 1], session.listen_port()));
    // The leecher, like one that came by magnet, must get the piece hashes from bae.
    let mut leecher = PyPeer::leech(&kept_path, &tmp.path().join("leech"), bae_addr);
    leecher.wait_line("DONE");
    for (rel, _) in ALBUM {
        let same = std::fs::read(tmp.path().join("leech/Album").join(rel)).unwrap()
            == std::fs::read(album.join(rel)).unwrap();
        assert!(same, "{rel} differs");
    }
}

/// A store slower than the network fills libtorrent's write queue: bae must report the
/// queue full and wake the peers once it drains, or the download stalls.
#[test]
fn a_slow_store_throttles_the_download_without_stalling_it() {
    let tmp = tempfile::tempdir().unwrap();
    let big: &[(&str, usize)] = &[("a.flac", 12 << 20), ("b.flac", 3_333_333)];
    let album = make_album(&tmp.path().join("seed"), "Album", big, 9);
    let torrent_path = tmp.path().join("a.torrent");
    let (torrent, _) = python_torrent(&album, &torrent_path, 512 << 10, "hybrid");
    let meta = parse_metainfo(&torrent).unwrap();
    let seeder = PyPeer::seed(&torrent_path, &tmp.path().join("seed"));
    let storage = FileStorage::new(&tmp.path().join("store"));
    storage
        .write_delay_us
        .store(1_500, std::sync::atomic::Ordering::Relaxed);
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    let t = TorrentId(13);
    let opts = AddOptions {
        peers: vec![seeder.addr()],
        ..AddOptions::default()
    };
    session.add(t, Source::Metainfo(torrent), opts).unwrap();
    wait_event(&events, "torrent finished", |e| {
        *e == Event::TorrentFinished { t }
    });
    assert!(storage.stream(t) == expected_stream(&album, &meta.layout));
}

/// Peer reads stuck on a slow remote must not hold up another torrent's download: reads
/// have their own workers, apart from writes and hashing.
#[test]
fn stuck_reads_do_not_stall_another_download() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = FileStorage::new(&tmp.path().join("store"));
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    let bae_addr = std::net::SocketAddr::from(([127, 0, 0, 1], session.listen_port()));

    // Torrent A: bae seeds it, but every read of it hangs.
    let a_album = make_album(&tmp.path().join("a"), "Album", ALBUM, 50);
    let a_path = tmp.path().join("a.torrent");
    let (a_torrent, _) = python_torrent(&a_album, &a_path, 64 << 10, "hybrid");
    let a_meta = parse_metainfo(&a_torrent).unwrap();
    let a = TorrentId(20);
    storage.prefill(a, expected_stream(&a_album, &a_meta.layout), true);
    storage.stall_reads(a);
    // Whatever happens, let the hung reads go before the session is dropped: libtorrent
    // waits for every read in flight when it shuts down.
    struct Unstall(std::sync::Arc<FileStorage>);
    impl Drop for Unstall {
        fn drop(&mut self) {
            self.0.unstall_reads();
        }
    }
    let _unstall = Unstall(storage.clone());
    session
        .add(a, Source::Metainfo(a_torrent), AddOptions::default())
        .unwrap();
    let mut leecher = PyPeer::leech(&a_path, &tmp.path().join("leech"), bae_addr);
    wait_until("reads of A to hang", || {
        storage
            .stalled_reads
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    });

    // Torrent B downloads meanwhile.
    let b_album = make_album(&tmp.path().join("b"), "Album", ALBUM, 51);
    let b_path = tmp.path().join("b.torrent");
    let (b_torrent, _) = python_torrent(&b_album, &b_path, 64 << 10, "hybrid");
    let b_meta = parse_metainfo(&b_torrent).unwrap();
    let seeder = PyPeer::seed(&b_path, &tmp.path().join("b"));
    let b = TorrentId(21);
    let opts = AddOptions {
        peers: vec![seeder.addr()],
        ..AddOptions::default()
    };
    session.add(b, Source::Metainfo(b_torrent), opts).unwrap();
    wait_event(&events, "B finished", |e| {
        *e == Event::TorrentFinished { t: b }
    });
    assert!(storage.stream(b) == expected_stream(&b_album, &b_meta.layout));

    // The remote comes back: A's leecher finishes.
    storage.unstall_reads();
    leecher.wait_line("DONE");
}
