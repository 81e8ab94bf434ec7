//! The chaos scenarios of issue 7, through the real `bae` binary, a real S3 server (with
//! a fault-injecting proxy in front where it matters), real python3-libtorrent seeders
//! and a real FUSE mount, all on 127.0.0.1:
//! - a `kill -9` campaign during download, hashing, upload, eviction and reads;
//! - faults between bae and S3 (latency, 500/503, resets, cut bodies, cut PUTs, hangs,
//!   down);
//! - tampered objects in the remote; a wrong key; a full cache filesystem;
//! - generated hostile .torrent files and magnet links.
//!
//! Short by default (it runs inside scripts/test); `BAE_CHAOS=full` runs the long
//! campaign (scripts/chaos). `BAE_CHAOS_SEED=N` replays a run. Each scenario checks every
//! guarantee, prints one `CHAOS <scenario>: ok|FAILED ...: <counts>` line, and fails
//! listing every guarantee that broke.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use common::bae::Bae;
use common::chaos::{
    checked_read, chunks, compare_all, complete_and_uploaded, failed_reads, full_mode, heavy_lock,
    integrity_check, lost_chunks, object_file, panics, query, read_range, remount, run_bounded,
    seed, tail, targets, torrent_status, wait_status, LoopFs, ReadStats, Readers, Target, Verdict,
    UPLOADED,
};
use common::hostile;
use common::proxy::FaultProxy;
use common::s3::{S3Server, BUCKET};
use common::swarm::{make_album, python_torrent, PyPeer};

const REMOTE: &str = "s3://bae-test/lib";
const PREFIX: &str = "lib";

/// An album of about `mib` MiB: tracks of varied sizes (one in a sub-directory), a
/// cover, a cue sheet and a log. Content is pseudo-random (incompressible), per `seed`.
struct Album {
    _dir: tempfile::TempDir,
    name: String,
    root: PathBuf,
    torrent: PathBuf,
}

fn album(name: &str, mib: usize, seed: u64, mode: &str) -> Album {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut files: Vec<(String, usize)> = Vec::new();
    let mut left = mib << 20;
    let mut i = 1;
    while left > 600_000 {
        let len = rng.random_range(900_000..4_800_000).min(left);
        let dir = if i % 4 == 0 { "CD2/" } else { "" };
        files.push((format!("{dir}{i:02} - Track {i}.flac"), len));
        left -= len;
        i += 1;
    }
    files.push(("cover.jpg".into(), 345_678));
    files.push(("album.cue".into(), 1_234));
    files.push(("rip.log".into(), 777));
    let refs: Vec<(&str, usize)> = files.iter().map(|(n, l)| (n.as_str(), *l)).collect();
    let root = make_album(&dir.path().join("seed"), name, &refs, seed);
    let torrent = dir.path().join("album.torrent");
    python_torrent(&root, &torrent, 256 << 10, mode);
    Album {
        _dir: dir,
        name: name.to_owned(),
        root,
        torrent,
    }
}

impl Album {
    fn targets(&self, bae: &Bae) -> Vec<Target> {
        targets(&self.root, &bae.mountpoint.join(&self.name))
    }

    fn seed_dir(&self) -> &Path {
        self.root.parent().unwrap()
    }
}

fn add(bae: &Bae, a: &Album, peer: &PyPeer, wait: bool) {
    let peer = peer.addr().to_string();
    let mut args = vec!["add", a.torrent.to_str().unwrap(), "--peer", &peer];
    if wait {
        args.push("--wait");
    }
    bae.ok(&args);
}

fn ok_cmd(bae: &Bae, args: &[&str], timeout: Duration) -> Result<String, String> {
    match run_bounded(bae.cmd(args), timeout) {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "bae {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("bae {args:?}: {e}")),
    }
}

fn verify_ok(bae: &Bae, name: &str) -> Result<String, String> {
    ok_cmd(bae, &["verify", name], Duration::from_secs(300))
}

/// Every guarantee at the end of a scenario: the library's own consistency.
fn check_library(v: &mut Verdict, bae: &Bae) {
    let ic = integrity_check(&bae.home.join("bae.db"));
    v.check("PRAGMA integrity_check is ok", ic == "ok", || ic.clone());
    let p = panics(&bae.log());
    v.check("no panic in the daemon log", p.is_empty(), || p.join("\n"));
}

fn reads_right(v: &mut Verdict, st: &ReadStats) {
    v.check(
        "no read returned wrong bytes (zeros, stale, short)",
        st.wrong == 0,
        || format!("{}: {}", st.line(), st.wrong_details.join("; ")),
    );
}

/// kill -9 of the daemon at random moments while a rate-limited seeder feeds a download
/// into a small cache (seeding without pins, so chunks are uploaded and evicted as it
/// goes) and readers compare bytes with the original. Then: every file right, the
/// catalog sound, every uploaded chunk readable from the remote alone (verify, and a
/// restore after a last kill -9 into a new home), and the bytes downloaded again.
#[test]
fn kill_9_campaign() {
    let _heavy = heavy_lock();
    let full = full_mode();
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (kills, mib, rate) = if full {
        (24, 64, 2 << 20)
    } else {
        (4, 20, 3 << 20)
    };
    let mut v = Verdict::new("kill-9 campaign");
    let a = album("Chaos Kill - Album", mib, seed, "hybrid");
    let s3dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(s3dir.path());
    let mut seeder = PyPeer::seed_limited(&a.torrent, a.seed_dir(), rate);
    let bae = Bae::with_s3(&s3.endpoint(), BUCKET, &[("read_timeout_secs", "10")]);
    bae.configure(&[("cache_size", "\"6MiB\"")]);
    bae.mount();
    add(&bae, &a, &seeder, false);
    bae.ok(&["seed", &a.name, "on", "--no-pin"]);
    let targets = a.targets(&bae);
    let readers = Readers::start(targets.clone(), 2, seed);

    let mut stale = 0;
    let mut phases: Vec<&str> = Vec::new();
    let mut bad_integrity = Vec::new();
    let mut remount_error = None;
    // The last quarter of the kills (at least one) hit after the download: during
    // uploads, evictions and reads from the remote.
    let after_download = (kills / 4).max(1);
    for k in 0..kills {
        if k == kills - after_download {
            wait_status(&bae, &a.name, Duration::from_secs(300), |t| {
                t["progress"].as_f64().unwrap_or(0.0) >= 1.0
            });
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2_500)));
        let phase = match torrent_status(&bae, &a.name) {
            Some(t) if t["progress"].as_f64().unwrap_or(0.0) < 1.0 => "download",
            Some(t) if t["chunks_uploaded"] != t["chunks_total"] => "upload",
            Some(_) => "reads/eviction",
            None => "unknown",
        };
        phases.push(phase);
        bae.kill9();
        let ic = integrity_check(&bae.home.join("bae.db"));
        if ic != "ok" {
            bad_integrity.push(format!("after kill {k}: {ic}"));
        }
        match remount(&bae) {
            Ok(true) => stale += 1,
            Ok(false) => {}
            Err(e) => {
                remount_error = Some(format!("after kill {k}: {e}"));
                break;
            }
        }
    }
    v.check(
        "bae mount works after every kill (umount first allowed)",
        remount_error.is_none(),
        || remount_error.clone().unwrap_or_default(),
    );
    v.check(
        "PRAGMA integrity_check ok after every kill",
        bad_integrity.is_empty(),
        || bad_integrity.join("; "),
    );

    let deadline = Duration::from_secs(if full { 400 } else { 180 });
    let (done, last) = wait_status(&bae, &a.name, deadline, complete_and_uploaded);
    v.check(
        "download completes and every chunk is uploaded",
        done,
        || format!("{last}\nlog: {}", tail(&bae.log(), 20)),
    );
    // kill -9 the moment the last chunk is uploaded: the remote alone must then give
    // everything back (no clean stop, no later snapshot).
    bae.kill9();
    let uploaded_before = chunks(&bae.home.join("bae.db"))
        .iter()
        .filter(|c| c.state == UPLOADED)
        .count();
    // Bytes the seeder sent beyond the torrent: downloaded again after kills.
    std::thread::sleep(Duration::from_millis(1_500));
    // Payload only: libtorrent does not transfer pad files.
    let size = targets
        .iter()
        .map(|t| t.original.len() as u64)
        .sum::<u64>()
        .max(1);
    let sent = seeder.uploaded_bytes();
    let overhead = (sent as f64 - size as f64) / size as f64 * 100.0;
    // SPEC: nothing verified is downloaded again "beyond the pieces in flight". In flight
    // at a kill: what sits in the two socket buffers (the seeder counts it sent; bae's
    // receive buffer is 256 KiB here) and the blocks of unfinished pieces written since
    // the last resume save (1 s). 1 MiB per kill during the download bounds that; it
    // measured 0.19-0.23 MiB per kill (5.0-6.2 % of 64 MiB over 18 kills).
    let in_flight = phases.iter().filter(|p| **p == "download").count().max(1) as u64 * (1 << 20);
    let again = sent.saturating_sub(size);
    v.check(
        "downloaded again: no more than the pieces in flight (1 MiB per kill during the download)",
        again <= in_flight,
        || format!("{again} bytes again, allowed {in_flight}; {overhead:.1} % ({sent} bytes sent for {size})"),
    );
    drop(seeder);

    let restore_line = match Bae::restored(REMOTE, &s3.endpoint(), &bae.home.join("key")) {
        Err(e) => {
            v.check("bae init --restore after kill -9", false, || e.clone());
            "restore failed".to_owned()
        }
        Ok(r) => {
            let restored = chunks(&r.home.join("bae.db"));
            let up = restored.iter().filter(|c| c.state == UPLOADED).count();
            let torrents = query(&r.home.join("bae.db"), "SELECT id FROM torrents").len();
            v.check(
                "restore after kill -9 finds the torrent",
                torrents == 1,
                || format!("{torrents} torrents restored"),
            );
            v.check(
                "restore after kill -9: every chunk uploaded before the kill is uploaded",
                up >= uploaded_before,
                || format!("{up} of {uploaded_before} chunks restored as uploaded"),
            );
            // A missing chunk makes a read wait for peers: keep that wait short.
            r.configure(&[("read_timeout_secs", "5")]);
            match remount(&r) {
                Ok(_) if up < uploaded_before => {
                    v.check(
                        "every file right from the restored library (remote alone)",
                        false,
                        || "not read: chunks are missing from the restored catalog".into(),
                    );
                }
                Ok(_) => {
                    let bad = compare_all(&a.targets(&r));
                    v.check(
                        "every file right from the restored library (remote alone)",
                        bad.is_empty(),
                        || bad.join("; "),
                    );
                }
                Err(e) => {
                    v.check("the restored library mounts", false, || e.clone());
                }
            }
            format!("restore: {torrents} torrent, {up}/{uploaded_before} chunks uploaded")
        }
    };
    let back = remount(&bae);
    v.check("bae mount after the last kill", back.is_ok(), || {
        back.clone().unwrap_err()
    });
    // Reads after the end come from the remote (the cache is 6 MiB).
    std::thread::sleep(Duration::from_secs(2));
    let st = readers.stop();
    reads_right(&mut v, &st);
    let bad = compare_all(&targets);
    v.check(
        "sha256 of every file right through the mount",
        bad.is_empty(),
        || bad.join("; "),
    );
    let lost = lost_chunks(&bae.home);
    v.check(
        "no complete, un-uploaded chunk lost its local file",
        lost.is_empty(),
        || lost.join(", "),
    );
    let verify = verify_ok(&bae, &a.name);
    v.check(
        "bae verify: every chunk right locally and in the remote",
        verify.is_ok(),
        || verify.clone().unwrap_err(),
    );
    check_library(&mut v, &bae);

    let mut counts = std::collections::BTreeMap::new();
    for p in &phases {
        *counts.entry(*p).or_insert(0) += 1;
    }
    v.finish(&format!(
        "{} kills ({counts:?}), {stale} stale mounts needed `bae umount`; {}; \
         re-download overhead {overhead:.1} % ({sent} bytes sent for {size}); {restore_line}",
        phases.len(),
        st.line()
    ));
}

/// The S3 server behind the fault proxy: faults on during download, upload and reads,
/// then off. Uploads all finish, nothing un-uploaded is evicted, reads are right or EIO
/// within the read timeout, never wrong; a PUT cut short must not end as an uploaded
/// chunk whose object is short.
#[test]
fn faults_between_bae_and_s3() {
    let _heavy = heavy_lock();
    let full = full_mode();
    let seed = seed();
    let read_timeout_secs = 5u64;
    let mut v = Verdict::new("fault proxy");
    let a = album(
        "Chaos Faults - Album",
        if full { 40 } else { 12 },
        seed ^ 1,
        "hybrid",
    );
    let s3dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(s3dir.path());
    let mut proxy = FaultProxy::start(&s3.endpoint());
    proxy.send(&format!("seed {seed}"));
    let seeder = PyPeer::seed_limited(&a.torrent, a.seed_dir(), 2 << 20);
    let bae = Bae::with_s3(
        &proxy.endpoint(),
        BUCKET,
        &[("read_timeout_secs", &read_timeout_secs.to_string())],
    );
    bae.configure(&[("cache_size", "\"4MiB\"")]);
    bae.mount();
    // PUTs are cut from the first chunk on (the first phase below goes on with it), so
    // that the fault is exercised whatever the timing: one run saw no cut PUT at all
    // (73 requests, none cut, in the first phase's 22 s).
    proxy.set(&["truncate_put 100"]);
    add(&bae, &a, &seeder, false);
    bae.ok(&["seed", &a.name, "on", "--no-pin"]);
    let targets = a.targets(&bae);
    let readers = Readers::start(targets.clone(), 2, seed);

    // Cut PUTs first, while chunks are being uploaded. A phase whose fault the final
    // check counts lasts until the proxy injected one (or 20 s): a short phase with no
    // request in it proves nothing.
    let phases: &[(&str, &[&str], Option<&str>)] = &[
        (
            "PUT bodies cut short",
            &["truncate_put 100"],
            Some("truncated_puts"),
        ),
        ("latency", &["latency 400"], None),
        ("503 at random", &["error 40 503"], Some("errors")),
        ("burst of 500", &["burst 40 500"], None),
        ("connection resets", &["reset 40"], Some("resets")),
        ("GET bodies cut short", &["truncate_get 60"], None),
        ("hanging requests", &["hang 30"], None),
        ("down", &["down"], None),
        (
            "all at once",
            &[
                "latency 100",
                "error 20 503",
                "reset 15",
                "truncate_get 20",
                "truncate_put 30",
            ],
            None,
        ),
    ];
    let (rounds, phase_len) = if full {
        (3, Duration::from_secs(5))
    } else {
        (1, Duration::from_secs(2))
    };
    let mut lost = Vec::new();
    for _ in 0..rounds {
        for (label, cmds, wait_for) in phases {
            let before = wait_for.map(|k| proxy.stats().get(k).copied().unwrap_or(0));
            proxy.clear();
            proxy.set(cmds);
            std::thread::sleep(phase_len);
            if let (Some(k), Some(before)) = (wait_for, before) {
                let until = Instant::now() + Duration::from_secs(20);
                while proxy.stats().get(*k).copied().unwrap_or(0) == before
                    && Instant::now() < until
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            for l in lost_chunks(&bae.home) {
                lost.push(format!("{l} (during {label})"));
            }
        }
    }
    proxy.clear();
    let stats = proxy.stats();
    let (done, last) = wait_status(
        &bae,
        &a.name,
        Duration::from_secs(240),
        complete_and_uploaded,
    );
    v.check(
        "after the faults stop, every chunk is uploaded",
        done,
        || format!("{last}\nlog: {}", tail(&bae.log(), 20)),
    );
    std::thread::sleep(Duration::from_secs(2));
    let st = readers.stop();
    reads_right(&mut v, &st);
    let bound = Duration::from_secs(read_timeout_secs + 1);
    v.check(
        "every EIO came within read_timeout_secs (+1 s)",
        st.longest_eio <= bound,
        || {
            format!(
                "longest EIO after {:.1} s: {}; bae's last failed reads:\n{}",
                st.longest_eio.as_secs_f64(),
                st.longest_eio_what,
                failed_reads(&bae.log(), 8)
            )
        },
    );
    v.check("nothing un-uploaded was evicted", lost.is_empty(), || {
        lost.join(", ")
    });
    let bad = compare_all(&targets);
    v.check(
        "every file right through the mount after the faults",
        bad.is_empty(),
        || bad.join("; "),
    );
    let verify = verify_ok(&bae, &a.name);
    v.check(
        "bae verify: no uploaded chunk has a short or bad object (cut PUTs)",
        verify.is_ok(),
        || verify.clone().unwrap_err(),
    );
    check_library(&mut v, &bae);
    let n = |k: &str| stats.get(k).copied().unwrap_or(0);
    v.check(
        "the faults were exercised (errors, resets, cut PUTs)",
        n("errors") > 0 && n("resets") > 0 && n("truncated_puts") > 0,
        || format!("{stats:?}"),
    );
    drop(seeder);
    v.finish(&format!(
        "{} phases x {rounds}; proxy: {} requests, {} errors, {} resets, {} hangs, {} cut GETs, \
         {} cut PUTs; {}",
        phases.len(),
        n("requests"),
        n("errors"),
        n("resets"),
        n("hangs"),
        n("truncated_gets"),
        n("truncated_puts"),
        st.line()
    ));
}

/// One file of a torrent as the catalog records it.
struct FileSpan {
    rel: PathBuf,
    offset: u64,
    len: u64,
}

fn files_of(db: &Path, name: &str) -> Vec<FileSpan> {
    use rusqlite::types::Value;
    query(
        db,
        &format!(
            "SELECT f.path, f.stream_offset, f.len FROM files f JOIN torrents t \
             ON t.id = f.torrent_id WHERE t.name = '{}' AND f.pad = 0 ORDER BY f.idx",
            name.replace('\'', "''")
        ),
    )
    .into_iter()
    .map(|r| {
        let path: Vec<String> = match &r[0] {
            Value::Text(t) => serde_json::from_str(t).unwrap(),
            _ => Vec::new(),
        };
        let n = |v: &Value| match v {
            Value::Integer(i) => *i as u64,
            _ => 0,
        };
        FileSpan {
            rel: path.iter().collect(),
            offset: n(&r[1]),
            len: n(&r[2]),
        }
    })
    .collect()
}

/// Tampered objects in the remote: a flipped byte, a truncated object, two chunks of a
/// torrent swapped, one chunk swapped with another torrent's. With the cache emptied,
/// every read of an affected chunk is EIO and every other read is right; once the
/// objects are put back, everything reads right again.
#[test]
fn tampered_objects_in_the_remote() {
    let seed = seed();
    let mut v = Verdict::new("tampered objects");
    let a = album("Chaos Tamper - A", 9, seed ^ 2, "v1");
    let b = album("Chaos Tamper - B", 4, seed ^ 3, "v1");
    let s3dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(s3dir.path());
    let bae = Bae::with_s3(&s3.endpoint(), BUCKET, &[("read_timeout_secs", "5")]);
    bae.mount();
    for x in [&a, &b] {
        let peer = PyPeer::seed(&x.torrent, x.seed_dir());
        add(&bae, x, &peer, true);
    }
    for x in [&a, &b] {
        let (done, last) = wait_status(
            &bae,
            &x.name,
            Duration::from_secs(120),
            complete_and_uploaded,
        );
        assert!(done, "setup: {} not uploaded: {last}", x.name);
        bae.ok(&["seed", &x.name, "on", "--no-pin"]);
    }
    bae.ok(&["evict"]);
    let db = bae.home.join("bae.db");
    let all = chunks(&db);
    let of = |name: &str, i: u32| {
        let c = all
            .iter()
            .find(|c| c.torrent_name == name && c.index == i)
            .unwrap_or_else(|| panic!("no chunk {i} of {name}"));
        object_file(&s3, PREFIX, c.object_id.as_ref().unwrap())
    };
    let originals: Vec<(PathBuf, Vec<u8>)> = [
        of(&a.name, 0),
        of(&a.name, 1),
        of(&a.name, 2),
        of(&a.name, 3),
        of(&a.name, 4),
        of(&b.name, 0),
    ]
    .into_iter()
    .map(|p| {
        let d = std::fs::read(&p).unwrap();
        (p, d)
    })
    .collect();
    let obj = |i: usize| originals[i].1.clone();
    let mut flipped = obj(0);
    flipped[obj(0).len() / 2] ^= 0x40;
    std::fs::write(&originals[0].0, flipped).unwrap();
    std::fs::write(&originals[1].0, &obj(1)[..obj(1).len() - 100]).unwrap();
    std::fs::write(&originals[2].0, obj(3)).unwrap();
    std::fs::write(&originals[3].0, obj(2)).unwrap();
    std::fs::write(&originals[4].0, obj(5)).unwrap();
    std::fs::write(&originals[5].0, obj(4)).unwrap();
    let tampered: Vec<(&str, u32)> = vec![
        (&a.name, 0),
        (&a.name, 1),
        (&a.name, 2),
        (&a.name, 3),
        (&a.name, 4),
        (&b.name, 0),
    ];

    // Read every file chunk by chunk, page-aligned inside each chunk (a page that
    // straddles two chunks belongs to both).
    let page = 4096u64;
    let mut st = ReadStats::default();
    let mut eio_where_tampered = 0;
    let mut not_eio = Vec::new();
    let read_all =
        |st: &mut ReadStats, not_eio: &mut Vec<String>, eio: &mut u32, expect_tamper: bool| {
            for x in [&a, &b] {
                for f in files_of(&db, &x.name) {
                    let t = Target {
                        mounted: bae.mountpoint.join(&x.name).join(&f.rel),
                        original: std::sync::Arc::new(std::fs::read(x.root.join(&f.rel)).unwrap()),
                    };
                    let first = f.offset >> 20;
                    let last = (f.offset + f.len).saturating_sub(1) >> 20;
                    for c in first..=last {
                        let lo = (c << 20).max(f.offset) - f.offset;
                        let hi = ((c + 1) << 20).min(f.offset + f.len) - f.offset;
                        let (lo, hi) = (lo.div_ceil(page) * page, hi / page * page);
                        if lo >= hi {
                            continue;
                        }
                        let bad = expect_tamper && tampered.contains(&(x.name.as_str(), c as u32));
                        if bad {
                            match read_range(&t.mounted, lo, (hi - lo) as usize) {
                                Err(e) if e.raw_os_error() == Some(libc::EIO) => *eio += 1,
                                Ok(got) if got[..] != t.original[lo as usize..hi as usize] => {
                                    st.wrong += 1;
                                    st.wrong_details.push(format!(
                                        "{} chunk {c}: tampered chunk served wrong bytes",
                                        x.name
                                    ));
                                }
                                other => not_eio.push(format!(
                                    "{} chunk {c} ({}): {:?}",
                                    x.name,
                                    f.rel.display(),
                                    other.map(|_| "right bytes from a tampered object")
                                )),
                            }
                        } else {
                            checked_read(st, &t, lo, (hi - lo) as usize);
                        }
                    }
                }
            }
        };
    read_all(&mut st, &mut not_eio, &mut eio_where_tampered, true);
    reads_right(&mut v, &st);
    v.check(
        "every read of an unaffected chunk is right",
        st.eio == 0 && st.unavailable == 0,
        || st.line(),
    );
    v.check(
        "every read of a tampered chunk is EIO",
        not_eio.is_empty(),
        || not_eio.join("; "),
    );
    let va = ok_cmd(&bae, &["verify", &a.name], Duration::from_secs(120));
    let vb = ok_cmd(&bae, &["verify", &b.name], Duration::from_secs(120));
    v.check(
        "bae verify fails on both tampered torrents",
        va.is_err() && vb.is_err(),
        || format!("A: {va:?}; B: {vb:?}"),
    );
    let status_text =
        ok_cmd(&bae, &["status", "--json"], Duration::from_secs(30)).unwrap_or_default();

    // Objects put back: nothing poisoned stays behind.
    for (p, d) in &originals {
        std::fs::write(p, d).unwrap();
    }
    let mut after = ReadStats::default();
    let mut unused = (Vec::new(), 0);
    read_all(&mut after, &mut unused.0, &mut unused.1, false);
    v.check(
        "after the objects are put back, every read is right",
        after.right == after.reads && after.reads > 0,
        || after.line(),
    );
    check_library(&mut v, &bae);
    let integrity_in_status = status_text.contains("integrity") || status_text.contains("tamper");
    v.finish(&format!(
        "6 objects tampered (flip, truncate, swap within A, swap A<->B); {eio_where_tampered} \
         tampered-chunk reads EIO; unaffected: {}; after repair: {}; status mentions \
         integrity failures: {integrity_in_status}",
        st.line(),
        after.line()
    ));
}

/// A copy of a library with another (valid) key: `bae mount` must refuse with one clear
/// error, and the remote's metadata must stay what the real key sealed.
#[test]
fn wrong_key_at_mount() {
    let seed = seed();
    let mut v = Verdict::new("wrong key");
    let a = album("Chaos Key - Album", 3, seed ^ 4, "hybrid");
    let s3dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(s3dir.path());
    let bae = Bae::with_s3(&s3.endpoint(), BUCKET, &[]);
    bae.mount();
    {
        let peer = PyPeer::seed(&a.torrent, a.seed_dir());
        add(&bae, &a, &peer, true);
    }
    let (done, last) = wait_status(
        &bae,
        &a.name,
        Duration::from_secs(120),
        complete_and_uploaded,
    );
    assert!(done, "setup: not uploaded: {last}");
    bae.umount();
    // The library's metadata: meta/library and the per-torrent objects under meta/t/.
    let meta_dir = s3dir.path().join(BUCKET).join(PREFIX).join("meta");
    let snapshot = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    v.push((e.path(), std::fs::read(e.path()).unwrap_or_default()));
                }
            }
        }
        v.sort();
        v
    };
    let before = snapshot(&meta_dir);
    assert!(
        !before.is_empty(),
        "setup: no catalog metadata in the remote"
    );

    let copy = Bae::copy_with_key(&bae, &"5a".repeat(32));
    let mp = copy.mountpoint.to_str().unwrap().to_owned();
    let out = run_bounded(copy.cmd(&["mount", &mp]), Duration::from_secs(90));
    let (mounted, stderr) = match &out {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        ),
        Err(e) => (false, e.clone()),
    };
    v.check("bae mount with the wrong key fails", !mounted, || {
        "it mounted".into()
    });
    v.check(
        "the error is one clear line naming the key",
        !mounted && stderr.lines().count() == 1 && stderr.to_lowercase().contains("key"),
        || format!("stderr: {stderr:?}"),
    );
    if mounted {
        // What a user would do next: read a file (EIO), then stop it cleanly.
        let t = a.targets(&copy);
        let _ = read_range(&t[0].mounted, 0, 4096);
        std::thread::sleep(Duration::from_secs(2));
        let _ = run_bounded(copy.cmd(&["umount", &mp]), Duration::from_secs(60));
    }
    let after = snapshot(&meta_dir);
    v.check(
        "the remote's catalog metadata is unchanged",
        before == after,
        || {
            format!(
                "{} objects before, {} after, or changed bytes",
                before.len(),
                after.len()
            )
        },
    );
    let restored = Bae::restored(REMOTE, &s3.endpoint(), &bae.home.join("key"));
    v.check(
        "bae init --restore with the real key still works",
        restored.is_ok(),
        || restored.as_ref().err().cloned().unwrap_or_default(),
    );
    v.finish(&format!(
        "mount with wrong key: {}; stderr {stderr:?}",
        if mounted { "MOUNTED" } else { "refused" }
    ));
}

/// The cache on a small loop-mounted ext4 image whose free space is mostly taken by a
/// ballast file, a torrent larger than what is left, and a cache limit far above it (so
/// the disk fills before the limit). Dropped in field order: the daemon stops before
/// the image is unmounted.
struct FullDisk {
    bae: Bae,
    fs: LoopFs,
}

/// A full cache filesystem: no wrong bytes, catalog consistent, no panic, the reason
/// visible in `status`, and the download going on by itself once room exists. The
/// torrent is pinned (the default) so that nothing can be evicted and the disk really
/// fills to its reserve; unpinning it and `bae evict` make room, then the ballast is
/// deleted (a restart is the last resort, and a failure).
#[test]
fn full_cache_filesystem() {
    let seed = seed();
    let mut v = Verdict::new("full cache filesystem");
    let a = album("Chaos Full - Album", 40, seed ^ 5, "hybrid");
    let seeder = PyPeer::seed_limited(&a.torrent, a.seed_dir(), 8 << 20);
    let img_dir = tempfile::tempdir().unwrap();
    let rig = {
        let bae = Bae::new();
        bae.configure(&[("read_timeout_secs", "5")]);
        let mut fs = LoopFs::create(
            &img_dir.path().join("cache.img"),
            &img_dir.path().join("disk"),
            96,
        );
        fs.bind("cache", &bae.home.join("cache"));
        fs.fill_leaving(20 << 20).unwrap();
        FullDisk { bae, fs }
    };
    let bae = &rig.bae;
    bae.mount();
    add(bae, &a, &seeder, false);
    let targets = a.targets(bae);
    let readers = Readers::start(targets.clone(), 1, seed);

    // Wait until the download stops moving.
    let progress = |b: &Bae| {
        torrent_status(b, &a.name)
            .and_then(|t| t["progress"].as_f64())
            .unwrap_or(0.0)
    };
    let stalled_at = {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut last, mut since) = (progress(bae), Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let p = progress(bae);
            if p != last {
                (last, since) = (p, Instant::now());
            }
            if p >= 1.0 || since.elapsed() > Duration::from_secs(5) || Instant::now() > deadline {
                break p;
            }
        }
    };
    v.check(
        "the disk filled before the download ended (the test is not blind)",
        stalled_at < 1.0,
        || format!("progress {stalled_at}, free {} bytes", rig.fs.free_bytes()),
    );
    let report = ok_cmd(bae, &["status", "--json"], Duration::from_secs(30)).unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&report).unwrap_or_default();
    let t = json["torrents"].get(0).cloned().unwrap_or_default();
    let says_why =
        !t["error"].is_null() || json["warnings"].as_array().is_some_and(|w| !w.is_empty());
    v.check(
        "status says why the download stopped (disk full)",
        says_why,
        || {
            format!(
                "state {}, error {}, warnings {}",
                t["state"], t["error"], json["warnings"]
            )
        },
    );
    let alive = bae
        .daemon_pid()
        .is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
    v.check("the daemon is alive with its disk full", alive, || {
        tail(&bae.log(), 20)
    });

    // Room by eviction (everything uploaded can go once unpinned): the download should
    // go on by itself.
    let before_evict = torrent_status(bae, &a.name).unwrap_or_default();
    // Pieces completing begun chunks go first, so at the stall much of what is local
    // is complete (uploaded, evictable once unpinned). With libtorrent's own order it
    // was 3-7 chunks of 34-39 (at most a fifth); with the chunk order 12-16 of 19-26,
    // and 8 of 26 once in CI: a quarter tells the two apart. What stays begun is mostly
    // the reader's: its random reads set deadlines wherever they land (a window of 8
    // whole chunks raised ahead of the download changed nothing: 11-13 of 22-28).
    let (complete, local) = (
        before_evict["chunks_complete"].as_u64().unwrap_or(0),
        before_evict["chunks_local"].as_u64().unwrap_or(0),
    );
    v.check(
        "at the stall, begun chunks were finished first (a quarter or more of the local chunks are complete)",
        local > 0 && complete * 4 >= local,
        || format!("{complete} of {local} local chunks complete; {before_evict}"),
    );
    let _ = ok_cmd(
        bae,
        &["seed", &a.name, "on", "--no-pin"],
        Duration::from_secs(60),
    );
    let _ = ok_cmd(bae, &["evict"], Duration::from_secs(60));
    // The complete chunks' room lets the download on at once (what peers sent while
    // the gate was closed, then more).
    let before = before_evict["progress"]
        .as_f64()
        .unwrap_or(0.0)
        .max(stalled_at);
    let (moved, after) = wait_status(bae, &a.name, Duration::from_secs(20), |t| {
        t["progress"].as_f64().unwrap_or(0.0) > before + 0.02
    });
    v.check(
        "after unpinning and bae evict the download goes on by itself",
        moved,
        || {
            format!(
                "progress {before:.3} did not grow by 0.02; before evict {before_evict}; after {after}; log: {}",
                tail(&bae.log(), 20)
            )
        },
    );
    // Room by deleting what filled the disk.
    let freed = rig.fs.free_ballast();
    v.check("the ballast could be deleted", freed.is_ok(), || {
        freed.clone().unwrap_err()
    });
    let (done, last) = wait_status(bae, &a.name, Duration::from_secs(45), complete_and_uploaded);
    v.check(
        "with room again the download completes without a restart",
        done,
        || format!("{last}"),
    );
    let mut restarted = false;
    if !done {
        restarted = true;
        let mp = bae.mountpoint.to_str().unwrap().to_owned();
        let _ = ok_cmd(bae, &["umount", "--lazy", &mp], Duration::from_secs(60));
        let r = remount(bae);
        v.check(
            "the daemon restarts after the disk filled",
            r.is_ok(),
            || r.clone().unwrap_err(),
        );
        let (done, last) =
            wait_status(bae, &a.name, Duration::from_secs(90), complete_and_uploaded);
        v.check("after a restart the download completes", done, || {
            format!("{last}")
        });
    }
    let st = readers.stop();
    reads_right(&mut v, &st);
    let bad = compare_all(&targets);
    v.check("every file right in the end", bad.is_empty(), || {
        format!(
            "{}; the readers' longest EIO: {}; bae's last failed reads:\n{}",
            bad.join("; "),
            st.longest_eio_what,
            failed_reads(&bae.log(), 8)
        )
    });
    let lost = lost_chunks(&bae.home);
    v.check(
        "no complete, un-uploaded chunk lost",
        lost.is_empty(),
        || lost.join(", "),
    );
    check_library(&mut v, bae);
    let enospc = bae.log().matches("No space left").count();
    drop(seeder);
    v.finish(&format!(
        "20 MiB free on the cache disk, 40 MiB torrent: stalled at {:.0} % with {complete} of \
         {local} local chunks complete, status says why: {says_why}, resumed after evict: \
         {moved}, completed once space was freed: {done}{}; \
         {enospc} ENOSPC log lines; {}",
        stalled_at * 100.0,
        if restarted { " (needed a restart)" } else { "" },
        st.line()
    ));
}

/// Generated hostile .torrent files and magnet links, each `bae add`ed to a running
/// daemon: each is a clean add or a one-line error with a non-zero exit; no panic, no
/// crash, no hang, and the daemon answers at the end.
#[test]
fn hostile_torrents_and_magnets() {
    let full = full_mode();
    let seed = seed();
    let count = if full { 1_200 } else { 150 };
    let mut v = Verdict::new("hostile input");
    let bae = Bae::new();
    bae.mount();
    let dir = tempfile::tempdir().unwrap();
    let inputs = hostile::inputs(count, seed, full);
    let (mut added, mut refused, mut torrents, mut magnets) = (0, 0, 0, 0);
    let mut bad = Vec::new();
    let mut hangs = Vec::new();
    let mut crashes = Vec::new();
    let pid = bae.daemon_pid();
    for (i, input) in inputs.iter().enumerate() {
        let arg = match input {
            hostile::Input::Torrent(_, bytes) => {
                torrents += 1;
                let p = dir.path().join(format!("{i}.torrent"));
                std::fs::write(&p, bytes).unwrap();
                p.to_str().unwrap().to_owned()
            }
            hostile::Input::Magnet(_, uri) => {
                magnets += 1;
                uri.clone()
            }
        };
        match run_bounded(bae.cmd(&["add", &arg]), Duration::from_secs(60)) {
            Err(e) => hangs.push(format!("{}: {e}", input.label())),
            Ok(o) if o.status.success() => added += 1,
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr).trim().to_owned();
                let one_line = err.lines().count() == 1 && err.starts_with("bae: ");
                if o.status.code() == Some(1) && one_line && !err.contains("panicked") {
                    refused += 1;
                } else {
                    bad.push(format!(
                        "{}: exit {:?}, stderr {:?}",
                        input.label(),
                        o.status.code(),
                        err.chars().take(300).collect::<String>()
                    ));
                }
            }
        }
        if i % 25 == 24 || i + 1 == inputs.len() {
            let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
            if !alive {
                crashes.push(format!("daemon gone after input {i} ({})", input.label()));
                if remount(&bae).is_err() {
                    break;
                }
            }
        }
    }
    v.check(
        "every input: a clean add or a one-line error, exit 1",
        bad.is_empty(),
        || bad.join("\n"),
    );
    v.check("no command hung", hangs.is_empty(), || hangs.join("\n"));
    v.check("the daemon never crashed", crashes.is_empty(), || {
        crashes.join("\n")
    });
    v.check(
        "some inputs were valid and added (the test is not blind)",
        added > 0,
        || "none added".into(),
    );
    let status = run_bounded(bae.cmd(&["status", "--json"]), Duration::from_secs(60));
    let answered = status.as_ref().is_ok_and(|o| {
        o.status.success()
            && serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .is_ok_and(|s| s["daemon_running"] == true)
    });
    v.check("the daemon answers bae status at the end", answered, || {
        format!(
            "{:?}",
            status
                .as_ref()
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        )
    });
    // Nothing escapes the mount: every torrent is a plain directory right under it.
    let escaped: Vec<String> = std::fs::read_dir(&bae.mountpoint)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    n.is_empty() || n == ".." || n == "." || n.as_encoded_bytes().contains(&b'/')
                })
                .map(|e| format!("{:?}", e.file_name()))
                .collect()
        })
        .unwrap_or_else(|e| vec![format!("cannot list the mount: {e}")]);
    v.check(
        "the mount lists only sane names",
        escaped.is_empty(),
        || escaped.join(", "),
    );
    let stopped = ok_cmd(
        &bae,
        &["umount", bae.mountpoint.to_str().unwrap()],
        Duration::from_secs(90),
    );
    v.check(
        "the daemon stops cleanly at the end",
        stopped.is_ok(),
        || stopped.clone().unwrap_err(),
    );
    check_library(&mut v, &bae);
    v.finish(&format!(
        "{} inputs ({torrents} torrents, {magnets} magnets): {added} added, {refused} one-line \
         errors, {} bad answers, {} hangs, {} crashes",
        inputs.len(),
        bad.len(),
        hangs.len(),
        crashes.len()
    ));
}
