//! How the mount fits the system around it, through the real `bae` binary and a real
//! kernel FUSE mount: the tree follows torrents added and removed while mounted.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::bae::{make_flac_album, Bae};
use common::swarm::python_torrent;

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn a_torrent_added_while_mounted_appears_at_once_and_a_removed_one_goes() {
    let dir = tempfile::tempdir().unwrap();
    let first = make_flac_album(&dir.path().join("a"), "First Album", 1, 2);
    let second = make_flac_album(&dir.path().join("b"), "Second Album", 1, 2);
    let (t1, t2) = (dir.path().join("1.torrent"), dir.path().join("2.torrent"));
    python_torrent(&first, &t1, 64 * 1024, "v1");
    python_torrent(&second, &t2, 64 * 1024, "hybrid");
    let bae = Bae::new();
    bae.ok(&["add", "--paused", t1.to_str().unwrap()]);
    bae.mount();
    let mp = &bae.mountpoint;
    assert_eq!(listing(mp), BTreeSet::from(["First Album".to_string()]));
    // Looked up before it exists: the kernel must not remember the miss.
    assert!(std::fs::metadata(mp.join("Second Album")).is_err());

    bae.ok(&["add", "--paused", t2.to_str().unwrap()]);
    // `add` returns once the daemon has it: no waiting or polling here.
    assert_eq!(
        listing(mp),
        BTreeSet::from(["First Album".to_string(), "Second Album".to_string()])
    );
    assert!(std::fs::metadata(mp.join("Second Album")).unwrap().is_dir());
    assert_eq!(
        listing(&mp.join("Second Album")),
        listing(&second),
        "the new album's files"
    );

    bae.ok(&["remove", "First Album"]);
    assert_eq!(listing(mp), BTreeSet::from(["Second Album".to_string()]));
    // Looked up (and cached by the kernel) before: gone now, not stale.
    assert_eq!(
        std::fs::metadata(mp.join("First Album"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
    bae.umount();
}
