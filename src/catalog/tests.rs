use super::*;

fn layout(total: u64, piece: u64) -> Layout {
    Layout {
        piece_len: piece,
        total_len: total,
        files: vec![
            FileRecord {
                path: vec!["a".into(), "01.flac".into()],
                stream_offset: 0,
                len: total - 10,
                pad: false,
                mtime: 5,
            },
            FileRecord {
                path: vec!["cover.jpg".into()],
                stream_offset: total - 10,
                len: 10,
                pad: false,
                mtime: 6,
            },
        ],
    }
}

fn open() -> (tempfile::TempDir, Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let cat = Catalog::open(&dir.path().join("bae.db")).unwrap();
    (dir, cat)
}

fn add(cat: &Catalog, name: &str, h: u8) -> TorrentId {
    cat.add_torrent(&NewTorrent {
        info_hash_v1: Some([h; 20]),
        name: name.into(),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn torrent_layout_and_chunks_round_trip() {
    let (_d, cat) = open();
    let id = add(&cat, "Album", 1);
    assert!(cat.layout(id).unwrap().is_none());
    let l = layout(5 << 20, 256 << 10);
    let g = cat.set_layout(id, &l, None, Some(b"d4:infod")).unwrap();
    assert_eq!(g.num_chunks(), 5);
    // Idempotent, but a different layout is refused.
    cat.set_layout(id, &l, None, None).unwrap();
    assert!(matches!(
        cat.set_layout(id, &layout(6 << 20, 256 << 10), None, None),
        Err(CatalogError::LayoutMismatch(_))
    ));
    assert_eq!(cat.layout(id).unwrap().unwrap(), l);
    // A chunk has no row until it is complete (library scale).
    assert!(cat.chunks(id).unwrap().is_empty());
    let t = cat.torrent(id).unwrap();
    assert!(t.has_metainfo && t.untouched() && !t.settled());
    assert_eq!(cat.metainfo(id).unwrap().as_deref(), Some(&b"d4:infod"[..]));
    assert!(t.seeding && t.pin && !t.paused);
}

#[test]
fn bad_layout_is_refused_and_changes_nothing() {
    let (_d, cat) = open();
    let id = add(&cat, "Album", 1);
    let mut l = layout(5 << 20, 256 << 10);
    l.files[1].stream_offset += 1;
    assert!(cat.set_layout(id, &l, None, None).is_err());
    assert!(cat.layout(id).unwrap().is_none());
    assert!(cat.chunks(id).unwrap().is_empty());
}

#[test]
fn duplicates_and_lookup() {
    let (_d, cat) = open();
    add(&cat, "Abbey Road", 0xab);
    add(&cat, "Abba Gold", 0xcd);
    let dup = cat.add_torrent(&NewTorrent {
        info_hash_v1: Some([0xab; 20]),
        name: "x".into(),
        ..Default::default()
    });
    assert!(matches!(dup, Err(CatalogError::Duplicate(_))));
    assert_eq!(cat.find("Abbey").unwrap().name, "Abbey Road");
    assert_eq!(cat.find("cdcd").unwrap().name, "Abba Gold");
    assert!(matches!(
        cat.find("Abb"),
        Err(CatalogError::Ambiguous { .. })
    ));
    assert!(matches!(cat.find("zzz"), Err(CatalogError::NoMatch(_))));
    assert!(matches!(cat.find(""), Err(CatalogError::NoMatch(_))));
}

#[test]
fn verified_pieces_complete_chunks_then_upload() {
    let (_d, cat) = open();
    let id = add(&cat, "A", 1);
    cat.set_layout(id, &layout(3 << 20, 1 << 20), None, None)
        .unwrap();
    let done = Completed {
        index: 1,
        len: 1 << 20,
        hash: [7; 32],
        object_id: "obj".into(),
    };
    cat.commit_verified(id, &[1, 1, 2], &[done]).unwrap();
    assert_eq!(cat.verified_pieces(id).unwrap(), vec![1, 2]);
    let counts = |cat: &Catalog| {
        let t = cat.torrent(id).unwrap();
        (t.n_verified, t.n_complete, t.n_uploaded)
    };
    assert_eq!(counts(&cat), (2, 1, 0), "counts follow the rows");
    let key = ChunkKey::new(id, 1);
    let c = cat.chunk(key).unwrap().unwrap();
    assert_eq!(c.state, ChunkState::Complete);
    assert_eq!(c.hash, Some([7; 32]));
    assert!(
        !cat.mark_uploaded(key, "another version").unwrap(),
        "only the version that owns the object is marked"
    );
    assert_eq!(cat.chunk(key).unwrap().unwrap().state, ChunkState::Complete);
    assert!(cat.mark_uploaded(key, "obj").unwrap());
    assert_eq!(cat.chunk(key).unwrap().unwrap().state, ChunkState::Uploaded);
    assert_eq!(counts(&cat), (2, 1, 1));
    // Recovery never reverts an uploaded chunk.
    cat.unverify(id, &[1], &[1]).unwrap();
    assert_eq!(cat.chunk(key).unwrap().unwrap().state, ChunkState::Uploaded);
    assert_eq!(cat.verified_pieces(id).unwrap(), vec![2]);
    assert_eq!(counts(&cat), (1, 1, 1));
    cat.forget_uploaded_chunk(key).unwrap();
    assert_eq!(counts(&cat), (1, 1, 0));
    cat.unverify(id, &[2], &[1]).unwrap();
    assert_eq!(counts(&cat), (0, 0, 0), "a partial chunk has no row");
    assert!(cat.chunk(key).unwrap().is_none());
    let done = Completed {
        index: 2,
        len: 1 << 20,
        hash: [8; 32],
        object_id: "obj".into(),
    };
    cat.commit_verified(id, &[0, 1, 2], &[done]).unwrap();
    assert!(cat.mark_uploaded(ChunkKey::new(id, 2), "obj").unwrap());
    assert!(!cat.torrent(id).unwrap().settled());
    assert_eq!(cat.remove_torrent(id).unwrap(), vec!["obj".to_string()]);
    assert!(cat.chunks(id).unwrap().is_empty());
    assert_eq!(cat.integrity_check().unwrap(), "ok");
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bae.db");
    let (uid, id) = {
        let cat = Catalog::open(&path).unwrap();
        let id = add(&cat, "A", 1);
        (cat.library_uid().unwrap(), id)
    };
    let cat = Catalog::open(&path).unwrap();
    assert_eq!(cat.library_uid().unwrap(), uid);
    assert_eq!(cat.torrent(id).unwrap().name, "A");
}

#[test]
fn processes_sharing_a_new_library_neither_fail_nor_clash() {
    // Separate connections, as separate `bae` processes have: each opens (migrating a
    // fresh file), then adds torrents while reading, and one adds the same torrent twice.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bae.db");
    let threads: Vec<_> = (0..4u8)
        .map(|w| {
            let path = path.clone();
            std::thread::spawn(move || {
                let cat = Catalog::open(&path).unwrap();
                let uid = cat.library_uid().unwrap();
                let mut dups = 0;
                for i in 0..25u8 {
                    let mut h = [w; 20];
                    h[1] = i;
                    cat.add_torrent(&NewTorrent {
                        info_hash_v1: Some(h),
                        name: format!("w{w}-{i}"),
                        ..Default::default()
                    })
                    .unwrap();
                    assert!(!cat.torrents().unwrap().is_empty());
                    // Every worker also adds one shared torrent: exactly one wins.
                    let shared = cat.add_torrent(&NewTorrent {
                        info_hash_v1: Some([0xee; 20]),
                        name: "shared".into(),
                        ..Default::default()
                    });
                    match shared {
                        Ok(_) => {}
                        Err(CatalogError::Duplicate(_)) => dups += 1,
                        Err(e) => panic!("worker {w}: {e}"),
                    }
                }
                (uid, dups)
            })
        })
        .collect();
    let results: Vec<([u8; 16], u32)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        results.iter().all(|r| r.0 == results[0].0),
        "one library uid"
    );
    let dups: u32 = results.iter().map(|r| r.1).sum();
    assert_eq!(
        dups,
        4 * 25 - 1,
        "the shared torrent was added exactly once"
    );
    let cat = Catalog::open(&path).unwrap();
    assert_eq!(cat.torrents().unwrap().len(), 4 * 25 + 1);
}
