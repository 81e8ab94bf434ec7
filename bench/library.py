"""`scripts/bench library`: what a library of 1–50 TB costs bae.

Metadata-only albums: valid v1 torrents (4 MiB pieces, 12 files) whose data never
arrives, so their piece hashes are random 20-byte strings. Each is added with
`bae add --paused` to a library on the embedded local-directory remote while the daemon
runs; then the daemon is restarted and the fixed costs are measured. Every figure is
also given as a ratio to the 1 TB library's.
"""
import json
import os
import random
import statistics
import subprocess
import threading
import time

import common as c

MiB = c.MiB
PIECE = 4 * MiB


def bencode(x):
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, str):
        return bencode(x.encode())
    if isinstance(x, list):
        return b"l" + b"".join(bencode(i) for i in x) + b"e"
    if isinstance(x, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in x.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(type(x))


def album_torrent(path, index, size, rng):
    """Writes a 12-track torrent of `size` bytes with random piece hashes."""
    weights = [rng.uniform(0.6, 1.4) for _ in range(12)]
    lengths = [int(size * w / sum(weights)) for w in weights]
    lengths[-1] += size - sum(lengths)
    pieces = (size + PIECE - 1) // PIECE
    info = {
        "name": f"Library Artist {index:05d} - Album {index:05d}",
        "piece length": PIECE,
        "pieces": rng.randbytes(20 * pieces),
        "files": [{"length": n, "path": [f"{i + 1:02d} - Track {i + 1}.flac"]}
                  for i, n in enumerate(lengths)],
    }
    with open(path, "wb") as f:
        f.write(bencode({"info": info, "created by": "bae bench"}))


LIBRARIES = {
    # key: (label, albums, bytes per album)
    "1tb": ("1 TB (10 × 100 GB)", 10, 100 * 10**9),
    "10tb": ("10 TB (10 × 1 TB)", 10, 10**12),
    "50tb": ("50 TB (50 × 1 TB)", 50, 10**12),
    "5k": ("5,000 × 1 GB (5 TB)", 5000, 10**9),
    "20k": ("20,000 × 1 GB (20 TB)", 20000, 10**9),
}
# --quick: the two small ones; default: up to 50 TB; --big: also 20,000 albums.
QUICK, DEFAULT, BIG = ["1tb", "10tb"], ["1tb", "10tb", "50tb"], ["1tb", "10tb", "50tb", "20k"]


def timed(fn):
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def ls_r(path):
    """`ls -R` of the mount, as a user runs it; returns the number of lines printed."""
    r = subprocess.run(["ls", "-R", path], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"ls -R {path}: {r.stderr.strip()[:200]}")
    return r.stdout.count("\n")


class MetaWatch:
    """Counts the bytes bae writes to the remote outside its chunk objects, by sampling
    the local-directory remote every `interval` s: a file that appears or changes (size or
    mtime) counts its whole size as written. Rewrites closer together than the interval
    are missed (bae's metadata writer ticks every 5 s)."""

    def __init__(self, root, interval=1.0):
        self.root, self.interval = root, interval
        self.seen = {}
        self.written = 0
        self.writes = 0
        self.largest = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def scan(self):
        for top in os.listdir(self.root) if os.path.isdir(self.root) else []:
            if top == "chunks":
                continue
            for root, _dirs, files in os.walk(os.path.join(self.root, top)):
                for f in files:
                    if f.startswith("."):  # a server's own bookkeeping, not an object
                        continue
                    p = os.path.join(root, f)
                    try:
                        st = os.lstat(p)
                    except OSError:
                        continue
                    sig = (st.st_size, st.st_mtime_ns)
                    if self.seen.get(p) != sig:
                        self.seen[p] = sig
                        self.written += st.st_size
                        self.writes += 1
                        self.largest = max(self.largest, st.st_size)

    def _run(self):
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._t.join()
        self.scan()
        return self

    def settled(self, quiet):
        """True once nothing new was written for `quiet` seconds."""
        n = (self.written, self.writes)
        if getattr(self, "_last", None) != n:
            self._last, self._since = n, time.monotonic()
        return time.monotonic() - self._since >= quiet


def remote_meta(remote):
    """(bytes, objects, largest object) stored outside the chunk objects, by top dir."""
    out = {}
    for top in sorted(os.listdir(remote)) if os.path.isdir(remote) else []:
        if top == "chunks":
            continue
        sizes = []
        for root, _dirs, files in os.walk(os.path.join(remote, top)):
            sizes += [os.lstat(os.path.join(root, f)).st_size for f in files
                      if not f.startswith(".")]
        out[top] = (sum(sizes), len(sizes), max(sizes, default=0))
    return out


def measure(ctx, label, albums, size):
    b = c.Bae(ctx.bin, ctx.work, "library", cache_size="10GiB")
    rng = random.Random(albums * 7 + size)
    chunks = albums * ((size + MiB - 1) // MiB)
    res = {"library": label, "albums": albums, "bytes": albums * size, "chunks": chunks}
    t_start = time.monotonic()
    remote = os.path.join(b.home, "remote")
    watch = None
    try:
        res["mount_empty_s"] = b.mount()
        watch = MetaWatch(remote)
        sampler = c.RssSampler(b.pid, 0.2)
        adds, gen = [], 0.0
        tpath = os.path.join(b.dir, "album.torrent")
        last_log = time.monotonic()
        for i in range(albums):
            t0 = time.monotonic()
            album_torrent(tpath, i, size, rng)
            gen += time.monotonic() - t0
            adds.append(timed(lambda: b.run("add", tpath, "--paused")))
            if i + 1 in (100, 1000, 2000, 5000, 10000, 20000):
                res[f"add_at_{i + 1}_s"] = statistics.median(adds[-50:])
            if time.monotonic() - last_log > 30:
                last_log = time.monotonic()
                c.log(f"   {label}: {i + 1} albums added, median "
                      f"{statistics.median(adds):.3f} s, RSS "
                      f"{(c.proc_status(b.pid, 'VmRSS') or 0) / MiB:.0f} MiB")
        res["gen_s"] = gen / albums
        c.log(f"   {label}: {albums} added in {sum(adds):.0f} s (torrents generated in "
              f"{gen:.1f} s); waiting for the metadata writer")
        # Settle: bae writes the metadata of what was added (its writer ticks every 5 s).
        deadline = time.monotonic() + 600
        while not watch.settled(12):
            if time.monotonic() > deadline:
                raise RuntimeError("remote metadata still changing after 600 s")
            time.sleep(1)
        res["rss_after_adds"] = c.proc_status(b.pid, "VmRSS")
        sampler.stop()
        res["add_s"] = statistics.median(adds)
        res["add_first_s"] = statistics.median(adds[:max(1, min(10, albums // 10))])
        res["add_last_s"] = statistics.median(adds[-max(1, min(10, albums // 10)):])
        res["add_max_s"] = max(adds)
        res["rss_peak_adding"] = sampler.peak
        res["umount1_s"] = b.umount()
        # The fixed costs, on a restarted daemon.
        res["mount_s"] = b.mount()
        sampler = c.RssSampler(b.pid, 0.2)
        time.sleep(5)
        res["rss_idle"] = c.proc_status(b.pid, "VmRSS")
        st = b.status()
        res["torrents_listed"] = len(st["torrents"])
        if res["torrents_listed"] != albums:
            c.log(f"   warning: status lists {res['torrents_listed']} of {albums} torrents")
        res["status_s"] = statistics.median(
            timed(lambda: b.run("status", "--json")) for _ in range(5))
        res["ls_lines"] = 0

        def walk():
            res["ls_lines"] = ls_r(b.mnt)
        res["ls_s"] = timed(walk)
        res["ls_warm_s"] = timed(walk)
        res["rss_after_ls"] = c.proc_status(b.pid, "VmRSS")
        sampler.stop()
        res["rss_peak"] = max(sampler.peak, res["rss_peak_adding"])
        res["rss_peak_restart"] = sampler.peak
        res["umount2_s"] = b.umount()
        res["umount_s"] = max(res["umount1_s"], res["umount2_s"])
        watch.stop()
        db = os.path.join(b.home, "bae.db")
        res["db_bytes"] = sum(os.path.getsize(p) for p in (db, db + "-wal")
                              if os.path.exists(p))
        stored = remote_meta(remote)
        res["meta_stored"] = {k: list(v) for k, v in stored.items()}
        res["meta_bytes"] = watch.written
        res["meta_writes"] = watch.writes
        res["meta_largest"] = watch.largest
        res["meta_per_album"] = watch.written / albums
        res["wall_s"] = time.monotonic() - t_start
        return res
    finally:
        if watch:
            watch.stop()
        b.remove()


COLUMNS = [
    # key, header, scale, unit
    ("add_s", "add per album", 1, "s"),
    ("rss_idle", "RSS idle", MiB, "MiB"),
    ("rss_peak", "RSS peak", MiB, "MiB"),
    ("db_bytes", "bae.db", 1e6, "MB"),
    ("meta_bytes", "remote meta written", 1e6, "MB"),
    ("meta_largest", "largest meta object", 1e6, "MB"),
    ("mount_s", "mount → ready", 1, "s"),
    ("umount_s", "umount", 1, "s"),
    ("ls_s", "ls -R", 1, "s"),
    ("status_s", "status --json", 1, "s"),
]


def checks(r, base):
    """Targets of the scale issue; judged on every library (they are stated at 50 TB)."""
    out = []
    if r.get("rss_idle") is not None:
        out.append(("RSS idle ≤ 150 MiB", r["rss_idle"] <= 150 * MiB))
        if base and base is not r:
            out.append(("RSS idle ≤ 1.2× 1 TB", r["rss_idle"] <= 1.2 * base["rss_idle"]))
    for k, lim, name in (("mount_s", 2, "mount ≤ 2 s"), ("umount_s", 2, "umount ≤ 2 s"),
                         ("status_s", 0.2, "status ≤ 200 ms")):
        if k in r:
            out.append((name, r[k] <= lim))
    if base and base is not r and r.get("meta_bytes") and base.get("meta_bytes"):
        # Metadata-only albums upload no chunk, so "per chunk uploaded" cannot be judged;
        # what can: metadata per byte of library does not grow with the library.
        per = r["meta_bytes"] / r["bytes"]
        out.append(("meta per TB ≤ 1.2× 1 TB", per <= 1.2 * base["meta_bytes"] / base["bytes"]))
    return out


def cell(v):
    return f"{v:.3f}" if v < 10 else f"{v:,.0f}"


def render(rows):
    base = next((r for r in rows if r["library"].startswith("1 TB") and "error" not in r),
                None)
    head = ["library"] + [f"{h} ({u})" for _, h, _, u in COLUMNS] + ["wall", "targets"]
    table = [head]
    for r in rows:
        if "error" in r:
            table.append([r["library"], "FAILED: " + r["error"][:90]] + [""] * (len(head) - 2))
            continue
        cells = [r["library"]]
        for k, _, scale, _ in COLUMNS:
            if r.get(k) is None:
                cells.append("–")
                continue
            text = cell(r[k] / scale)
            if base and base is not r and base.get(k):
                text += f" ({r[k] / base[k]:.1f}×)"
            cells.append(text)
        cells.append(f"{r['wall_s']:.0f} s")
        cells.append(" ".join(("✔ " if ok else "✘ MISSED ") + n for n, ok in checks(r, base)))
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    text = "\n".join(" | ".join(x.ljust(widths[i]) for i, x in enumerate(row)).rstrip()
                     for row in table)
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return text, "\n".join(md)


def run(ctx):
    a = ctx.args
    keys = (a.libs.split(",") if a.libs else
            BIG if a.big else QUICK if a.quick else DEFAULT)
    unknown = [k for k in keys if k not in LIBRARIES]
    if unknown:
        raise RuntimeError(f"unknown --libs {unknown}; known: {', '.join(LIBRARIES)}")
    rows = []
    for k in keys:
        label, albums, size = LIBRARIES[k]
        with c.heavy_lock(f"library {label}"):
            try:
                r = measure(ctx, label, albums, size)
                c.log(f"   {label}: done in {r['wall_s']:.0f} s: " + ", ".join(
                    f"{h} {cell(r[key] / sc)} {u}" for key, h, sc, u in COLUMNS)
                    + f"; add: first {r['add_first_s']:.3f} s, last {r['add_last_s']:.3f} s")
            except Exception as e:
                c.log(f"   {label}: {e}")
                r = {"library": label, "error": str(e)}
            rows.append(r)
            # Each size's figures are kept even if a later, longer one is interrupted.
            with open(os.path.join(ctx.args.out, "library-partial.json"), "w") as f:
                json.dump(rows, f, indent=1)
    text, md = render(rows)
    base = next((r for r in rows if r["library"].startswith("1 TB") and "error" not in r),
                None)
    missed = sum(1 for r in rows if "error" not in r for _, ok in checks(r, base) if not ok)
    missed += sum(1 for r in rows if "error" in r)
    note = ("library: metadata-only albums (4 MiB pieces, 12 files, random piece hashes), "
            "added --paused, embedded local-directory remote; (n×) = ratio to the 1 TB "
            "library; RSS idle = 5 s after a restart, peak = adding and after the restart; "
            "umount = the slower of the two; remote meta written = bytes of non-chunk "
            "objects created or rewritten (sampled each second); targets as stated for 50 TB")
    return {"text": note + "\n" + text, "markdown": md, "json": rows, "missed": missed}
