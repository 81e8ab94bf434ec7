//! bae's libtorrent session against python3-libtorrent peers (stock storage) on
//! 127.0.0.1: downloads into and seeds from a `TorrentStorage`, for v1 (with pad files),
//! v2 and hybrid torrents, several piece sizes, and a magnet link.

mod common;

use bae::model::TorrentId;
use bae::torrent::{parse_metainfo, AddOptions, Event, Session, SessionConfig, Source};
use common::swarm::{
    expected_stream, make_album, python_torrent, python_torrent_with_tracker, wait_event, Aria2,
    FileStorage, PyPeer,
};

/// An album: tracks of uneven sizes, so files end mid-piece and pad files appear.
const ALBUM: &[(&str, usize)] = &[
    ("01 - Intro.flac", 1_234_567),
    ("02 - Song.flac", 3_456_789),
    ("03 - Outro.flac", 777_777),
    ("cover.jpg", 123_456),
    ("Scans/back.png", 50_001),
    ("album.cue", 999),
];

/// bae downloads the album from a python seeder; the store's bytes must equal the album's.
fn download(mode: &str, piece_len: u64, magnet: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let album = make_album(&tmp.path().join("seed"), "Album", ALBUM, piece_len);
    let (torrent, magnet_uri) =
        python_torrent(&album, &tmp.path().join("a.torrent"), piece_len, mode);
    let meta = parse_metainfo(&torrent).unwrap();
    assert_eq!(meta.info_hash_v1().is_some(), mode != "v2");
    assert_eq!(
        meta.info_hash_v2().is_some(),
        mode == "v2" || mode == "hybrid"
    );
    let has_pads = meta.layout.files.iter().any(|f| f.pad);
    assert_eq!(has_pads, mode != "v1", "pad files in a {mode} torrent");
    let seeder = PyPeer::seed(&tmp.path().join("a.torrent"), &tmp.path().join("seed"));

    let storage = FileStorage::new(&tmp.path().join("store"));
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    let t = TorrentId(7);
    let source = if magnet {
        Source::Magnet(magnet_uri)
    } else {
        Source::Metainfo(torrent.clone())
    };
    let opts = AddOptions {
        peers: vec![seeder.addr()],
        ..AddOptions::default()
    };
    session.add(t, source, opts).unwrap();
    if magnet {
        let Event::MetadataReceived { torrent_bytes, .. } = wait_event(&events, "metadata", |e| {
            matches!(e, Event::MetadataReceived { .. })
        }) else {
            unreachable!()
        };
        let received = parse_metainfo(&torrent_bytes).unwrap();
        assert_eq!(received.layout, meta.layout);
        assert_eq!(received.name, meta.name);
    }
    wait_event(&events, "torrent finished", |e| {
        *e == Event::TorrentFinished { t }
    });

    let layout = storage.layout(t);
    assert_eq!(layout.files, meta.layout.files);
    assert_eq!(layout.piece_len, piece_len);
    let stream = storage.stream(t);
    assert!(
        stream == expected_stream(&album, &layout),
        "stored bytes differ from the album"
    );
    assert!(
        storage.verified(t).iter().all(|&v| v),
        "store not told of every verified piece"
    );
    let status = session.status(t).unwrap();
    assert_eq!(status.pieces_have, layout.num_pieces());
    assert!(storage.stats().bytes_written >= ALBUM.iter().map(|f| f.1 as u64).sum::<u64>());
    drop(session);
    drop(seeder);
}

#[test]
fn downloads_hybrid_torrent_with_pad_files_256k() {
    download("hybrid", 256 << 10, false);
}

#[test]
fn downloads_v1_torrent_with_pad_files_4m() {
    download("v1pad", 4 << 20, false);
}

#[test]
fn downloads_v1_torrent_with_non_power_of_two_pieces() {
    download("v1", 48 << 10, false);
}

#[test]
fn downloads_v2_only_torrent() {
    download("v2", 64 << 10, false);
}

#[test]
fn downloads_from_a_magnet_link() {
    download("hybrid", 128 << 10, true);
}

#[test]
fn seeds_to_a_python_leecher() {
    let tmp = tempfile::tempdir().unwrap();
    let piece_len = 256 << 10;
    let album = make_album(&tmp.path().join("orig"), "Album", ALBUM, 3);
    let torrent_path = tmp.path().join("a.torrent");
    let (torrent, _) = python_torrent(&album, &torrent_path, piece_len, "hybrid");
    let meta = parse_metainfo(&torrent).unwrap();

    let storage = FileStorage::new(&tmp.path().join("store"));
    let t = TorrentId(1);
    storage.prefill(t, expected_stream(&album, &meta.layout), true);
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    session
        .add(t, Source::Metainfo(torrent), AddOptions::default())
        .unwrap();

    let bae_addr = std::net::SocketAddr::from(([127, 0, 0, 1], session.listen_port()));
    let out = tmp.path().join("leech");
    let mut leecher = PyPeer::leech(&torrent_path, &out, bae_addr);
    leecher.wait_line("DONE");
    for (rel, _) in ALBUM {
        let got = std::fs::read(out.join("Album").join(rel)).unwrap();
        let want = std::fs::read(album.join(rel)).unwrap();
        assert!(got == want, "{rel} differs");
    }
    let stats = storage.stats();
    assert!(stats.bytes_read >= ALBUM.iter().map(|f| f.1 as u64).sum::<u64>());
    assert_eq!(
        stats.verified_calls, 0,
        "the store was re-told of pieces it reported"
    );
}

/// aria2 (its own BitTorrent implementation) downloads from bae, found via a tracker.
#[test]
fn seeds_to_aria2_via_a_tracker() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker = PyPeer::tracker();
    let album = make_album(&tmp.path().join("orig"), "Album", ALBUM, 21);
    let torrent_path = tmp.path().join("a.torrent");
    let (torrent, _) = python_torrent_with_tracker(
        &album,
        &torrent_path,
        256 << 10,
        "v1pad",
        Some(&tracker.announce_url()),
    );
    let meta = parse_metainfo(&torrent).unwrap();
    let storage = FileStorage::new(&tmp.path().join("store"));
    let t = TorrentId(2);
    storage.prefill(t, expected_stream(&album, &meta.layout), true);
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    session
        .add(t, Source::Metainfo(torrent), AddOptions::default())
        .unwrap();

    let out = tmp.path().join("aria2");
    Aria2::leech(&torrent_path, &out).wait_success();
    for (rel, _) in ALBUM {
        let same = std::fs::read(out.join("Album").join(rel)).unwrap()
            == std::fs::read(album.join(rel)).unwrap();
        assert!(same, "{rel} differs");
    }
}

/// bae downloads from an aria2 seeder, found via a tracker.
#[test]
fn downloads_from_aria2_via_a_tracker() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker = PyPeer::tracker();
    let album = make_album(&tmp.path().join("seed"), "Album", ALBUM, 22);
    let torrent_path = tmp.path().join("a.torrent");
    let (torrent, _) = python_torrent_with_tracker(
        &album,
        &torrent_path,
        128 << 10,
        "v1",
        Some(&tracker.announce_url()),
    );
    let meta = parse_metainfo(&torrent).unwrap();
    let _seeder = Aria2::seed(&torrent_path, &tmp.path().join("seed"));

    let storage = FileStorage::new(&tmp.path().join("store"));
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    let t = TorrentId(8);
    session
        .add(t, Source::Metainfo(torrent), AddOptions::default())
        .unwrap();
    wait_event(&events, "torrent finished", |e| {
        *e == Event::TorrentFinished { t }
    });
    assert!(storage.stream(t) == expected_stream(&album, &meta.layout));
}

/// A magnet's trackers survive into the torrent bytes bae keeps for it.
#[test]
fn magnet_metadata_keeps_the_trackers() {
    let tmp = tempfile::tempdir().unwrap();
    let tracker = PyPeer::tracker();
    let album = make_album(&tmp.path().join("seed"), "Album", ALBUM, 30);
    let torrent_path = tmp.path().join("a.torrent");
    let (_, magnet) = python_torrent_with_tracker(
        &album,
        &torrent_path,
        64 << 10,
        "hybrid",
        Some(&tracker.announce_url()),
    );
    assert!(magnet.contains("tr="), "{magnet}");
    let seeder = PyPeer::seed(&torrent_path, &tmp.path().join("seed"));
    let storage = FileStorage::new(&tmp.path().join("store"));
    let session = Session::new(SessionConfig::loopback(storage.clone())).unwrap();
    let events = session.take_events().unwrap();
    let t = TorrentId(31);
    let opts = AddOptions {
        peers: vec![seeder.addr()],
        ..AddOptions::default()
    };
    session.add(t, Source::Magnet(magnet), opts).unwrap();
    let Event::MetadataReceived { torrent_bytes, .. } = wait_event(&events, "metadata", |e| {
        matches!(e, Event::MetadataReceived { .. })
    }) else {
        unreachable!()
    };
    let needle = tracker.announce_url();
    let found = torrent_bytes
        .windows(needle.len())
        .any(|w| w == needle.as_bytes());
    assert!(found, "tracker missing from the torrent bytes");
    assert!(parse_metainfo(&torrent_bytes).is_ok());
}

#[test]
fn downloads_with_the_smallest_pieces_16k() {
    download("v1pad", 16 << 10, false);
}

#[test]
fn downloads_with_the_largest_pieces_16m() {
    download("hybrid", 16 << 20, false);
}
