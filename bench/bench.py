#!/usr/bin/python3
"""bae side by side with its peers, in one run, on the same data, alternating runs.

Run through `scripts/bench` (which installs the tools and builds the release binary).
Every figure's runs happen under /tmp/bae-heavy.lock; everything started is stopped and
unmounted at exit, also on failure or Ctrl-C (common.cleanup).
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402
import report  # noqa: E402
from report import BAE, Figure  # noqa: E402

MiB = c.MiB
KiB = 1024
STOCK = "stock libtorrent"
# The same leecher with a 100 ms session tick, as bae's: it dials its peer within 0.1 s
# of `add` instead of 0.5 s, so its ratio is bae's against stock at full speed alone.
STOCK_TICK = "stock, 100 ms tick"
PLAYED = "bae, played while it downloads"
STOCK_PLAYED = "stock, its files played as they complete"
LOCAL = "local file"


class Ctx:
    def __init__(self, args):
        self.args = args
        self.bin = args.bae
        self.s3_server_bin = args.s3_server
        self.work = args.work
        self.runs = args.runs
        self.skip = {x for x in args.skip.split(",") if x}
        self.figures = []
        os.makedirs(self.work, exist_ok=True)
        self.data = os.path.join(self.work, "data")
        os.makedirs(self.data, exist_ok=True)
        self.album = c.make_album(self.data, args.album_mb * MiB)
        self.album_name = os.path.basename(self.album)
        self.files = sorted(os.listdir(self.album))
        self.tracks = c.album_tracks(self.album)
        self.size = c.album_size(self.album)
        self.rss = Figure("peak_rss", "peak RSS (whole mode)", "MiB", "lower",
                          [("abs", "≤", 150)])

    def figure(self, *a, **kw):
        f = Figure(*a, **kw)
        self.figures.append(f)
        return f

    def order(self, run, contenders):
        """Alternates who goes first: run i starts with contender i."""
        contenders = [x for x in contenders if x not in self.skip]
        k = run % len(contenders) if contenders else 0
        return contenders[k:] + contenders[:k]

    def bae(self, name, **kw):
        return c.Bae(self.bin, self.work, name, **kw)

    def note_rss(self, who, value):
        if value:
            self.rss.add(who, value / MiB)


def attempt(fig, who, fn):
    """Runs one measurement; a contender that cannot run here is reported, not fatal."""
    try:
        v = fn()
        if v is not None:
            fig.add(who, v)
        return v
    except Exception as e:  # any failure of a peer tool: say it in the table
        c.log(f"   {who}: {e}")
        fig.fail(who, str(e))
        return None


# ---------------------------------------------------------------- peers

def start_tracker():
    p = c.spawn([c.PY, os.path.join(c.REPO, "tests/peers/tracker.py")],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = c.PeerLine(p)
    port = int(lines.wait("PORT").split()[1])
    return p, f"http://127.0.0.1:{port}/announce"


def start_seeder(torrent, save, limit=None, announce=True):
    args = [c.PY, os.path.join(c.HERE, "ltpeer.py"), "seed", torrent, save]
    if limit or not announce:
        args.append(str(limit or 0))
    if not announce:
        args.append("--no-announce")
    p = c.spawn(args, stdout=subprocess.PIPE, text=True)
    lines = c.PeerLine(p)
    port = int(lines.wait("PORT", timeout=300).split()[1])
    return p, lines, f"127.0.0.1:{port}"


def start_slow_link(addr, rate, announce=None, torrent=None):
    """A link of `rate` bytes/s in front of the seeder at `addr` (see throttle.py); with
    `announce` it tells that tracker it seeds `torrent`, in the seeder's place."""
    port = addr.rsplit(":", 1)[1]
    extra = [announce, torrent] if announce else []
    p = c.spawn([c.PY, os.path.join(c.HERE, "throttle.py"), port, str(rate), *extra],
                stdout=subprocess.PIPE, text=True)
    lines = c.PeerLine(p)
    return p, f"127.0.0.1:{int(lines.wait('PORT', timeout=30).split()[1])}"


def stock_leech(ctx, torrent, addr, tag, tick_ms=None, reader=False):
    """MB/s of a stock libtorrent leecher downloading the album from `addr`; with
    `reader`, while a player reads each track from its files once the client says the
    track is complete (what a plain client offers a player)."""
    d = os.path.join(ctx.work, f"leech-{tag}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    extra = ["--tick", str(tick_ms)] if tick_ms else []
    if reader:
        extra.append("--files")
    p = c.spawn([c.PY, os.path.join(c.HERE, "ltpeer.py"), "leech", torrent, d, addr, *extra],
                stdout=subprocess.PIPE, text=True)
    lines = c.PeerLine(p)
    th = None
    if reader:
        def complete(t):
            done = f"FILE {os.path.join(ctx.album_name, t)}"
            lines.wait("", timeout=900, pred=lambda l: l == done or l.startswith("DONE"))
        th, out = start_player(os.path.join(d, ctx.album_name), ctx.tracks, complete)
    hwm = [0]

    def sample():
        h = c.proc_status(p.pid, "VmHWM")
        if h:
            hwm[0] = max(hwm[0], h)
    try:
        deadline = time.monotonic() + 900
        while p.poll() is None and time.monotonic() < deadline:
            sample()
            time.sleep(0.1)
        secs = float(lines.wait("DONE", timeout=5).split()[1])
        if th:
            player_done(ctx, th, out)
    finally:
        c.stop(p)
        shutil.rmtree(d, ignore_errors=True)
    ctx.note_rss(STOCK, hwm[0])
    return ctx.size / secs / 1e6


def aria2_leech(ctx, torrent):
    d = os.path.join(ctx.work, "aria2")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    args = ["aria2c", f"--dir={d}", "--enable-dht=false", "--enable-dht6=false",
            "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--seed-time=0",
            "--disable-ipv6=true", "--interface=127.0.0.1", "--file-allocation=none",
            "--bt-hash-check-seed=false", "--summary-interval=0", "--console-log-level=error",
            "--listen-port=49000-49100", "--follow-torrent=false", "-q", torrent]
    t0 = time.monotonic()
    try:
        p = c.spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, err = p.communicate(timeout=900)
        dt = time.monotonic() - t0
        if p.returncode != 0:
            raise RuntimeError(f"aria2c exit {p.returncode}: {err.strip()[:100]}")
        got = c.tree_size(d)
        if got < ctx.size:
            raise RuntimeError(f"aria2c got {got} of {ctx.size} bytes")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return ctx.size / dt / 1e6


def play_through(root, tracks, ready, out):
    """A player going through the album while it downloads: each track opened once
    `ready(track)` returns and read to its end (bae's mount: as soon as the tree shows it,
    its reads waiting for pieces, which libtorrent then fetches first; a plain client's
    files: once the client says the file is complete). Sets out["bytes"], or out["error"]."""
    got = 0
    try:
        for t in tracks:
            ready(t)
            with open(os.path.join(root, t), "rb", buffering=0) as f:
                while True:
                    b = f.read(MiB)
                    if not b:
                        break
                    got += len(b)
        out["bytes"] = got
    except Exception as e:
        out["error"] = f"the reader: {e} after {got} bytes"


def start_player(root, tracks, ready):
    out = {}
    th = threading.Thread(target=play_through, args=(root, tracks, ready, out), daemon=True)
    th.start()
    return th, out


def player_done(ctx, th, out):
    """Waits for a player started by `start_player` and checks it read the whole album."""
    want = sum(os.path.getsize(os.path.join(ctx.album, t)) for t in ctx.tracks)
    th.join(120)
    if "error" in out or th.is_alive():
        raise RuntimeError(out.get("error", "the reader did not finish"))
    if out["bytes"] != want:
        raise RuntimeError(f"the reader got {out['bytes']} bytes of {want}")


def bae_download(ctx, torrent, addr, name="dl", reader=False):
    """MB/s of bae downloading the album from `addr`, from `bae add` to every piece
    verified; with `reader`, while a player reads every track through the mount."""
    b = ctx.bae(name)
    try:
        b.mount()
        sampler = c.RssSampler(b.pid)
        th = None
        if reader:
            root = os.path.join(b.mnt, ctx.album_name)
            deadline = time.monotonic() + 900

            def shown(t):
                while not os.path.exists(os.path.join(root, t)):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{t} did not show in the mount")
                    time.sleep(0.005)
            th, out = start_player(root, ctx.tracks, shown)
        t0 = time.monotonic()
        # One command, answered by the daemon when the last piece is verified: polling
        # `status` would add a process (CPU on these 2 cores) every few milliseconds.
        b.run("add", torrent, "--peer", addr, "--wait", timeout=900)
        dt = time.monotonic() - t0
        sampler.stop()
        if b.torrent()["progress"] < 1.0:
            raise RuntimeError("add --wait returned before the download was complete")
        if th:
            player_done(ctx, th, out)
        ctx.note_rss(BAE, sampler.peak)
        return ctx.size / dt / 1e6
    finally:
        b.remove()


# ---------------------------------------------------------------- downloads

def mode_downloads(ctx):
    if ctx.args.bounded_only:
        return bounded_figures(ctx)
    tracker, announce = start_tracker()
    n = ctx.runs
    last_torrent, last_seeder = None, None
    if ctx.args.seed_only:
        torrent = c.make_torrent(ctx.album, os.path.join(ctx.work, "album-seed.torrent"),
                                 256 * KiB, "v1", announce)
        seeder, _, addr = start_seeder(torrent, ctx.data)
        seed_figures(ctx, torrent, seeder, addr)
        c.stop(tracker)
        return
    for piece, label in ((256 * KiB, "256 KiB"), (4 * MiB, "4 MiB")):
        torrent = c.make_torrent(ctx.album, os.path.join(ctx.work, f"album-{piece}.torrent"),
                                 piece, "v1", announce)
        seeder, _, addr = start_seeder(torrent, ctx.data)
        fig = ctx.figure(f"download_{piece}", f"download from a stock seeder, {label} pieces",
                         "MB/s", "higher", [("ratio", STOCK, "≥", 1.0)])
        played = ctx.figure(f"download_{piece}_reader", "same, while a player reads every "
                            "track through the mount as it arrives", "MB/s", "higher",
                            [("ratio", STOCK_PLAYED, "≥", 1.0), ("ratio", STOCK, "≥", 1.0)])
        with c.heavy_lock(fig.title):
            for run in range(n):
                for who in ctx.order(run, [BAE, PLAYED, STOCK, STOCK_PLAYED, STOCK_TICK,
                                           "aria2c"]):
                    if who == BAE:
                        v = attempt(fig, BAE, lambda: bae_download(ctx, torrent, addr))
                    elif who == PLAYED:
                        v = attempt(played, BAE,
                                    lambda: bae_download(ctx, torrent, addr, reader=True))
                    elif who == STOCK:
                        v = attempt(fig, STOCK, lambda: stock_leech(ctx, torrent, addr, "dl"))
                        if v is not None:
                            played.add(STOCK, v)
                    elif who == STOCK_PLAYED:
                        v = attempt(played, who, lambda: stock_leech(ctx, torrent, addr, "dl",
                                                                     reader=True))
                    elif who == STOCK_TICK:
                        v = attempt(fig, who,
                                    lambda: stock_leech(ctx, torrent, addr, "dl", tick_ms=100))
                    else:
                        v = attempt(fig, who, lambda: aria2_leech(ctx, torrent))
                    c.log(f"   run {run + 1} {who}: {report.fmt(v)} MB/s")
        if piece == 256 * KiB:
            last_torrent, last_seeder = torrent, (seeder, addr)
        else:
            c.stop(seeder)
    seed_figures(ctx, last_torrent, *last_seeder)
    c.stop(tracker)
    if not ctx.args.no_bounded:
        bounded_figures(ctx)


SEALED_CHUNK = MiB + 32  # a 1 MiB chunk sealed: header (magic, version, nonce) and tag
PUT_IN_FLIGHT = (1, 2, 4, 8)  # bae's upload concurrency adapts within 1..=8 (default)


def start_s3(ctx, name, buckets):
    root = os.path.join(ctx.work, name)
    shutil.rmtree(root, ignore_errors=True)
    for bucket in buckets:
        os.makedirs(os.path.join(root, bucket))
    p = c.spawn([ctx.s3_server_bin, root, "0", AK, SK], stdout=subprocess.PIPE, text=True)
    url = c.PeerLine(p).wait("READY", timeout=60).split()[1]
    env = {"AWS_ACCESS_KEY_ID": AK, "AWS_SECRET_ACCESS_KEY": SK, "AWS_REGION": "us-east-1"}
    return p, root, url, env


class DirSampler:
    """Samples the bytes under a directory every `interval` s in a thread (the cache)."""

    def __init__(self, path, interval=0.1):
        self.path, self.interval = path, interval
        self.peak, self.samples = 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, c.tree_size(self.path))
            self.samples += 1
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._t.join()
        return self


JOINT = "4GiB cache: add → every chunk uploaded (download and uploads at once)"


def conc_summary(samples):
    """The uploader's concurrency over a run: min / median / max of the samples."""
    if not samples:
        return "-"
    s = sorted(samples)
    return f"{s[0]} / {s[len(s) // 2]} / {s[-1]}"


LINK_MB_S = 60  # the slower-than-the-machine remote: an uplink the fault proxy serializes


def start_fault_proxy(ctx, upstream, put_rate):
    """examples/fault_proxy in front of the S3 server, every PUT body sharing one link of
    `put_rate` bytes/s: a remote slower than this machine's own loopback S3 server."""
    p = c.spawn([ctx.args.fault_proxy, upstream, "0", AK, SK], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True)
    lines = c.PeerLine(p)
    url = lines.wait("READY", timeout=60).split()[1]
    p.stdin.write(f"put_rate {put_rate}\n")
    p.stdin.flush()
    lines.wait("OK put_rate", timeout=10)
    return p, url


def bounded_figures(ctx):
    """Issue 11: a torrent several times the cache, downloaded with seeding unpinned to an
    S3 remote: once to the S3 server on 127.0.0.1 as it is (it shares the 2 cores with the
    seeder and bae), once behind a link slower than the machine (the fault proxy's
    `put_rate`), which is what a real remote is."""
    bound_mib = 64
    album_mb = 512
    album = c.make_album(os.path.join(ctx.data, f"bounded-{album_mb}"), album_mb * MiB)
    torrent = c.make_torrent(album, os.path.join(ctx.work, "bounded.torrent"), MiB)
    seeder, _, addr = start_seeder(torrent, os.path.dirname(album))
    try:
        bounded_case(ctx, album, torrent, addr, bound_mib, "", None)
        if ctx.args.fault_proxy:
            bounded_case(ctx, album, torrent, addr, bound_mib, "_link",
                         LINK_MB_S * 1_000_000)
        else:
            c.log("   no --fault-proxy: the slow-link case is skipped")
    finally:
        c.stop(seeder)


def bounded_case(ctx, album, torrent, addr, bound_mib, suffix, put_rate):
    """One remote: its PUT throughput (sealed-chunk-size objects, bae's concurrency range)
    first; then bae's download rate with the cache bound in force as a ratio to the best
    PUT figure, the cache's peak against its bound and the remote metadata per chunk."""
    import library
    import s3get
    size = c.album_size(album)
    name = os.path.basename(album)
    remote = ("S3 server on 127.0.0.1" if put_rate is None
              else f"the same behind a {put_rate / 1e6:.0f} MB/s upload link")
    put = ctx.figure("s3_put" + suffix, f"{remote}: PUT of sealed 1 MiB chunks "
                     f"({'/'.join(map(str, PUT_IN_FLIGHT))} in flight)", "MB/s", "higher", [])
    targets = [("ratio", "remote PUT, best", "≥", 0.9)]
    if put_rate is None:
        targets.append(("ratio", JOINT, "≥", 0.9))
    dl = ctx.figure("bounded_download" + suffix, f"{remote}: download of {size / 1e6:.0f} MB "
                    f"with --cache-size {bound_mib}MiB, seeding unpinned: steady rate (from "
                    "25 % to the end)", "MB/s", "higher", targets)
    peak = ctx.figure("bounded_peak" + suffix, f"same: peak of the cache directory (sampled "
                      f"every 100 ms) against the {bound_mib} MiB bound", "MiB", "lower",
                      [("abs", "≤", bound_mib * 1.25)])
    meta = ctx.figure("bounded_meta" + suffix, "same: remote metadata written per chunk "
                      "uploaded (non-chunk objects, sampled each second)", "B", "lower",
                      [("abs", "≤", 200)])
    s3p, s3root, url, env = start_s3(ctx, "s3-bounded" + suffix, ["bench", "puttest"])
    proxy = None
    if put_rate is not None:
        proxy, url = start_fault_proxy(ctx, url, put_rate)
    count = (128 if ctx.args.quick else 384)
    try:
        with c.heavy_lock(put.title):
            for run in range(ctx.runs):
                for k in PUT_IN_FLIGHT:
                    who = f"PUT ×{k}"

                    def one():
                        got, dt = s3get.put_throughput(url, "puttest", f"r{run}k{k}",
                                                       SEALED_CHUNK, count, AK, SK, k)
                        return got / dt / 1e6
                    v = attempt(put, who, one)
                    c.log(f"   run {run + 1} {who}: {report.fmt(v)} MB/s")
                shutil.rmtree(os.path.join(s3root, "puttest"), ignore_errors=True)
                os.makedirs(os.path.join(s3root, "puttest"))
        best = max((put.median(p) or 0) for p in put.peers())
        put.note = "client: python threads, one connection each (a floor on the server)"
        unbounded = "same, --cache-size 4GiB (bound never reached)"

        def one(run, cache_size, bounded):
            # A prefix per library: a new library's key cannot open another's metadata.
            prefix = f"bae-{run}-{cache_size}"
            b = ctx.bae("bounded" + suffix, remote_args=["--remote", f"s3://bench/{prefix}",
                                                         "--endpoint", url],
                        env=env, cache_size=cache_size)
            watch = library.MetaWatch(os.path.join(s3root, "bench", prefix)) if bounded else None
            try:
                b.mount()
                b.run("add", torrent, "--peer", addr, "--paused")
                b.run("seed", name[:12], "on", "--no-pin")
                cache = DirSampler(os.path.join(b.home, "cache"))
                rss = c.RssSampler(b.pid)
                prog = []
                conc = []
                t0 = time.monotonic()
                b.run("resume", name[:12])

                def done(s):
                    prog.append((time.monotonic(), s["torrents"][0]["progress"]))
                    conc.append((s.get("uploader") or {}).get("concurrency", 0))
                    return prog[-1][1] >= 1.0
                b.wait("download", done, timeout=900, interval=0.1)
                t_dl = time.monotonic() - t0
                b.wait_uploaded()
                t_up = time.monotonic() - t0
                cache.stop()
                rss.stop()
                ctx.note_rss(BAE, rss.peak)
                t25, p25 = next((t, p) for t, p in prog if p >= 0.25)
                steady = size * (1.0 - p25) / (prog[-1][0] - t25) / 1e6
                if bounded:
                    peak.add(BAE, cache.peak / MiB)
                    # Remote metadata per chunk uploaded (issue 8): the writer ticks every
                    # 5 s and compacts a finished torrent's journal into one object.
                    deadline = time.monotonic() + 60
                    while not watch.settled(7) and time.monotonic() < deadline:
                        time.sleep(0.5)
                    watch.stop()
                    uploaded = b.status()["uploader"]["uploaded_chunks"]
                    per = watch.written / max(1, uploaded)
                    meta.add(BAE, per)
                    c.log(f"   remote metadata: {watch.written} bytes in {watch.writes} "
                          f"writes for {uploaded} chunks ({per:.0f} B/chunk); stored: "
                          f"{library.remote_meta(os.path.join(s3root, 'bench', prefix))}")
                    dl.add("whole download (add → 100 %)", size / t_dl / 1e6)
                    dl.add("until every chunk uploaded", size / t_up / 1e6)
                else:
                    # What this machine does when it downloads and uploads the same bytes
                    # at once (seeder, bae and the S3 server share its cores): the rate
                    # the remote accepts during a download, which a bound can at best match.
                    dl.add(JOINT, size / t_up / 1e6)
                c.log(f"   run {run + 1} cache {cache_size}: steady {steady:.0f} MB/s, whole "
                      f"{size / t_dl / 1e6:.0f} MB/s, all uploaded after {t_up:.1f} s, cache "
                      f"peak {cache.peak / MiB:.1f} MiB ({cache.samples} samples), daemon "
                      f"RSS peak {rss.peak / MiB:.0f} MiB, upload concurrency "
                      f"{conc_summary(conc)}")
                return steady
            finally:
                if watch:
                    watch.stop()
                b.remove()

        # Behind the slow link the bound is what limits nothing: the unbounded run would
        # only measure the link again, so it runs against the machine's own server only.
        contenders = [BAE, unbounded] if put_rate is None else [BAE]
        with c.heavy_lock(dl.title):
            for run in range(ctx.runs):
                for who in ctx.order(run, contenders):
                    if who == BAE:
                        attempt(dl, BAE, lambda: one(run, f"{bound_mib}MiB", True))
                    else:
                        attempt(dl, unbounded, lambda: one(run, "4GiB", False))
                dl.add("remote PUT, best", best)
        peak.add("bound", bound_mib)
    finally:
        c.stop(proxy)
        c.stop(s3p)
        shutil.rmtree(s3root, ignore_errors=True)


def without_tracker(torrent):
    """A copy of `torrent` with no tracker (the same info hash: the info dict is kept)."""
    import libtorrent as lt
    meta = lt.bdecode(open(torrent, "rb").read())
    for k in (b"announce", b"announce-list"):
        meta.pop(k, None)
    out = torrent[:-len(".torrent")] + "-lone.torrent"
    with open(out, "wb") as f:
        f.write(lt.bencode(meta))
    return out


def seed_figures(ctx, torrent, seeder, seeder_addr):
    """A stock leecher downloading from bae (chunks cached; every chunk from the remote)
    against the same leecher downloading from the stock seeder."""
    cached = ctx.figure("seed_cached", "stock leecher downloading from bae, chunks cached",
                        "MB/s", "higher", [("ratio", "from the stock seeder", "≥", 1.0)])
    remote = ctx.figure("seed_remote", "same, every chunk from the local-directory remote",
                        "MB/s", "higher", [("ratio", "from the stock seeder", "≥", 0.9)])
    # The leechers get the torrent without its tracker: with it, the leecher measuring
    # the stock seeder also found bae (still seeding, announced to the same tracker) and
    # downloaded from both, twice as fast as from either.
    lone = without_tracker(torrent)
    b = ctx.bae("seeder")
    try:
        b.mount()
        b.run("add", torrent, "--peer", seeder_addr)
        b.wait("download", lambda s: s["torrents"][0]["progress"] >= 1.0, timeout=900)
        b.wait_uploaded()
        c.stop(seeder)  # from here on the leecher's only source is bae
        port = b.status()["listen_port"]
        bae_addr = f"127.0.0.1:{port}"
        sampler = c.RssSampler(b.pid)
        with c.heavy_lock("seeding to a stock leecher"):
            # A run lasts about a second and the stock pair's rate is bimodal (about 210
            # or 320 MB/s from one run to the next, with the same bytes): at least 5.
            for run in range(max(ctx.runs, 5)):
                ref_seeder = None
                for who in ctx.order(run, ["cached", "remote", "stock"]):
                    if who == "cached":
                        b.run("seed", ctx.album_name[:12], "on")
                        v = attempt(cached, BAE,
                                    lambda: stock_leech(ctx, lone, bae_addr, "seed"))
                    elif who == "remote":
                        b.evict_all(ctx.album_name[:12])
                        c.drop_caches()
                        v = attempt(remote, BAE,
                                    lambda: stock_leech(ctx, lone, bae_addr, "seed"))
                    else:
                        ref_seeder, _, ref_addr = start_seeder(lone, ctx.data, announce=False)
                        v = stock_leech(ctx, lone, ref_addr, "seed")
                        c.stop(ref_seeder)
                        cached.add("from the stock seeder", v)
                        remote.add("from the stock seeder", v)
                    c.log(f"   run {run + 1} {who}: {report.fmt(v)} MB/s")
        sampler.stop()
        ctx.note_rss(BAE, sampler.peak)
    finally:
        b.remove()


# ---------------------------------------------------------------- reads (local remote)

def fio_randread(path, seconds):
    """4 KiB random reads with O_DIRECT: IOPS, or an exception if fio cannot run."""
    r = subprocess.run(["fio", "--name=rr", f"--filename={path}", "--rw=randread", "--bs=4k",
                        "--direct=1", "--ioengine=psync", "--readonly", "--time_based",
                        f"--runtime={seconds}", "--output-format=json", "--numjobs=1"],
                       capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"fio: {(r.stderr or r.stdout).strip()[:100]}")
    j = json.loads(r.stdout[r.stdout.index("{"):])
    return j["jobs"][0]["read"]["iops"]


def imported_bae(ctx, name, remote_args=(), env=None):
    """A bae library holding the album (imported: verified chunks, uploaded)."""
    b = ctx.bae(name, remote_args=remote_args, env=env)
    b.mount()
    b.run("import", ctx.album, timeout=900)
    b.wait_uploaded()
    return b


def mode_reads(ctx):
    n = ctx.runs
    b = imported_bae(ctx, "reads")
    root = os.path.join(b.mnt, ctx.album_name)
    try:
        sampler = c.RssSampler(b.pid)
        seq = ctx.figure("read_seq_local", "sequential read through the mount, page cache "
                         "dropped, chunks local", "MB/s", "higher",
                         [("ratio", LOCAL, "≥", 0.9)])
        with c.heavy_lock(seq.title):
            b.run("seed", ctx.album_name[:12], "on")  # pinned: every chunk stays local
            for run in range(n):
                for who in ctx.order(run, [BAE, LOCAL]):
                    src = root if who == BAE else ctx.album
                    c.drop_caches()

                    def one():
                        t0 = time.monotonic()
                        got = c.read_tree(src, ctx.files)
                        return got / (time.monotonic() - t0) / 1e6
                    v = attempt(seq, who, one)
                    c.log(f"   run {run + 1} {who}: {report.fmt(v)} MB/s")
        rem = ctx.figure("read_seq_remote", "same, every chunk from the local-directory "
                         "remote (decrypt)", "MB/s", "higher", [("ratio", LOCAL, "≥", 0.6)])
        ttfb = ctx.figure("ttfb_remote", "time to first byte (4 KiB) of an evicted track, "
                          "local-directory remote", "ms", "lower", [("abs", "≤", 5)])
        last = ctx.tracks[-1]
        with c.heavy_lock(rem.title):
            for run in range(n):
                for who in ctx.order(run, [BAE, LOCAL]):
                    if who == BAE:
                        b.evict_all(ctx.album_name[:12])
                    c.drop_caches()
                    src = root if who == BAE else ctx.album
                    v = attempt(ttfb, who, lambda: 1000 * c.first_byte(os.path.join(src, last)))
                    if who == BAE:
                        b.evict_all(ctx.album_name[:12])
                    c.drop_caches()

                    def one():
                        t0 = time.monotonic()
                        got = c.read_tree(src, ctx.files)
                        return got / (time.monotonic() - t0) / 1e6
                    w = attempt(rem, who, one)
                    c.log(f"   run {run + 1} {who}: first byte {report.fmt(v)} ms, "
                          f"{report.fmt(w)} MB/s")
        rnd = ctx.figure("rand_cached_local", "4 KiB random reads (O_DIRECT), chunks cached",
                         "IOPS", "higher", [])
        secs = 2 if ctx.args.quick else 5
        with c.heavy_lock(rnd.title):
            c.read_file(os.path.join(root, last))  # every chunk of the track local again
            for run in range(n):
                for who in ctx.order(run, [BAE, LOCAL]):
                    src = root if who == BAE else ctx.album
                    v = attempt(rnd, who, lambda: fio_randread(os.path.join(src, last), secs))
                    c.log(f"   run {run + 1} {who}: {report.fmt(v)} IOPS")
        rnd.note = "local file: O_DIRECT goes to the disk, bae: to its chunk cache"
        sampler.stop()
        ctx.note_rss(BAE, sampler.peak)
    finally:
        b.remove()


# ---------------------------------------------------------------- remote (S3)

AK, SK = "bae-bench-access", "bae-bench-secret-key"


class S3Peers:
    """One S3 server (examples/s3_server) holding the album three ways: bae's encrypted
    chunks, rclone crypt's objects, and plain objects for s3fs and the raw GET figure."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.root = os.path.join(ctx.work, "s3")
        shutil.rmtree(self.root, ignore_errors=True)
        for bucket in ("bench", "rclone", "s3fs"):
            os.makedirs(os.path.join(self.root, bucket))
        self.proc = c.spawn([ctx.s3_server_bin, self.root, "0", AK, SK],
                            stdout=subprocess.PIPE, text=True)
        lines = c.PeerLine(self.proc)
        self.url = lines.wait("READY", timeout=60).split()[1]
        self.env = {"AWS_ACCESS_KEY_ID": AK, "AWS_SECRET_ACCESS_KEY": SK,
                    "AWS_REGION": "us-east-1"}
        self.rclone_conf = os.path.join(ctx.work, "rclone.conf")
        pw = subprocess.run(["rclone", "obscure", "bae-bench-password"], capture_output=True,
                            text=True, check=True).stdout.strip()
        open(self.rclone_conf, "w").write(
            f"[s3]\ntype = s3\nprovider = Other\naccess_key_id = {AK}\n"
            f"secret_access_key = {SK}\nendpoint = {self.url}\nforce_path_style = true\n"
            # crypt at the bucket's root: rclone HEADs a prefix it wraps as if it were an
            # object, and examples/s3_server answers 500 for a key that is a directory.
            f"region = us-east-1\n\n[crypt]\ntype = crypt\nremote = s3:rclone\n"
            f"password = {pw}\n")
        self.passwd = os.path.join(ctx.work, "s3fs.passwd")
        open(self.passwd, "w").write(f"{AK}:{SK}\n")
        os.chmod(self.passwd, 0o600)
        self.rclone_proc = self.s3fs_proc = None
        self.rclone_log = os.path.join(ctx.work, "rclone.log")
        self.rclone_mnt = os.path.join(ctx.work, "rclone-mnt")
        self.s3fs_mnt = os.path.join(ctx.work, "s3fs-mnt")
        os.makedirs(self.rclone_mnt, exist_ok=True)
        os.makedirs(self.s3fs_mnt, exist_ok=True)
        self.rclone_err = self.s3fs_err = None
        # rclone's AWS SDK refuses an AWS_CA_BUNDLE with its own HTTP transport; the
        # server is plain HTTP on loopback anyway.
        self.rclone_env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}

    def rclone(self, *args):
        r = subprocess.run(["rclone", "--config", self.rclone_conf, *args],
                           capture_output=True, text=True, timeout=900, env=self.rclone_env)
        if r.returncode != 0:
            raise RuntimeError(f"rclone {args[0]}: {r.stderr.strip()[-200:]}")
        return r.stdout

    def upload(self):
        try:
            self.rclone("copy", self.ctx.album, "crypt:")
        except Exception as e:
            self.rclone_err = str(e)
        try:
            self.rclone("copy", self.ctx.album, "s3:s3fs/album")
        except Exception as e:
            self.s3fs_err = str(e)

    def mount_rclone(self):
        """A cold rclone mount: a fresh, empty VFS cache."""
        self.umount_rclone()
        cache = os.path.join(self.ctx.work, "rclone-cache")
        shutil.rmtree(cache, ignore_errors=True)
        c.MOUNTS.append(self.rclone_mnt)
        self.rclone_proc = c.spawn(
            ["rclone", "--config", self.rclone_conf, "mount", "crypt:", self.rclone_mnt,
             "--vfs-cache-mode", "full", "--cache-dir", cache, "--read-only",
             "--log-level", "ERROR"], stderr=open(self.rclone_log, "w"), env=self.rclone_env)
        try:
            c.wait_mounted(self.rclone_mnt, 60, self.rclone_proc)
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {open(self.rclone_log).read().strip()[-160:]}")
        return self.rclone_mnt

    def umount_rclone(self):
        c.fuse_umount(self.rclone_mnt)
        c.stop(self.rclone_proc)

    def mount_s3fs(self):
        self.umount_s3fs()
        c.MOUNTS.append(self.s3fs_mnt)
        self.s3fs_proc = c.spawn(
            ["s3fs", "s3fs", self.s3fs_mnt, "-f", "-o", f"url={self.url}",
             "-o", "use_path_request_style", "-o", f"passwd_file={self.passwd}",
             "-o", "ro", "-o", "endpoint=us-east-1", "-o", "connect_timeout=5",
             "-o", "readwrite_timeout=15", "-o", "retries=2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c.wait_mounted(self.s3fs_mnt, 60, self.s3fs_proc)
        # s3fs answers before its first listing works: wait for the album to show. Each
        # look in a child that can be killed: an s3fs that hangs blocks its caller in the
        # kernel (seen once with s3fs 1.90, for minutes).
        deadline = time.monotonic() + 30
        track = os.path.join(self.s3fs_mnt, "album", self.ctx.tracks[-1])
        while True:
            try:
                if subprocess.run(["stat", track], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=10).returncode == 0:
                    break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("s3fs mounted but the album does not show")
            time.sleep(0.1)
        return os.path.join(self.s3fs_mnt, "album")

    def umount_s3fs(self):
        c.fuse_umount(self.s3fs_mnt)
        c.stop(self.s3fs_proc)

    def hwm(self, proc):
        return c.proc_status(proc.pid, "VmHWM") if proc and proc.poll() is None else None

    def close(self):
        self.umount_rclone()
        self.umount_s3fs()
        c.stop(self.proc)


def mode_remote(ctx):
    n = ctx.runs
    s3 = S3Peers(ctx)
    b = None
    try:
        with c.heavy_lock("remote: uploading the album to bae, rclone crypt and plain S3"):
            b = imported_bae(ctx, "bae-s3", ["--remote", "s3://bench/bae", "--endpoint", s3.url],
                             env=s3.env)
            s3.upload()
        root = os.path.join(b.mnt, ctx.album_name)
        sampler = c.RssSampler(b.pid)
        last = ctx.tracks[-1]
        name = ctx.album_name[:12]
        limit = min(240 * MiB, ctx.size)
        ttfb = ctx.figure("s3_ttfb", "S3 server on 127.0.0.1, cold: first 4 KiB of the last "
                          "track", "ms", "lower",
                          [("ratio", "rclone crypt", "≤", 0.3), ("abs", "≤", 10)])
        seq = ctx.figure("s3_seq", f"same, cold sequential read of {limit // MiB} MiB",
                         "MB/s", "higher", [("ratio", "rclone crypt", "≥", 1.2),
                                            ("ratio", "S3 GET ×8 in flight", "≥", 0.9)])
        rnd = ctx.figure("s3_rand", "same, 4 KiB random reads (O_DIRECT) once cached",
                         "IOPS", "higher", [("ratio", "s3fs", "≥", 1.0)])
        secs = 2 if ctx.args.quick else 5
        peers = [BAE, "rclone crypt", "s3fs", "S3 GET ×8 in flight"]

        def cold(who):
            """Makes `who` cold and returns the directory holding the album there."""
            if who == BAE:
                b.evict_all(name)
                c.drop_caches()
                return root
            if who == "rclone crypt":
                if s3.rclone_err:
                    raise RuntimeError(s3.rclone_err)
                d = s3.mount_rclone()
            else:
                if s3.s3fs_err:
                    raise RuntimeError(s3.s3fs_err)
                d = s3.mount_s3fs()
            c.drop_caches()
            return d

        def finish(who):
            if who == "rclone crypt":
                ctx.note_rss("rclone", s3.hwm(s3.rclone_proc))
                s3.umount_rclone()
            elif who == "s3fs":
                ctx.note_rss("s3fs", s3.hwm(s3.s3fs_proc))
                s3.umount_s3fs()

        def raw_get():
            objs = [(f"album/{f}", os.path.getsize(os.path.join(ctx.album, f)))
                    for f in ctx.files]
            import s3get
            got, dt = s3get.get_throughput(s3.url, "s3fs", objs, AK, SK, 8, MiB, limit)
            return got / dt / 1e6

        with c.heavy_lock("remote (S3): first byte, sequential, random"):
            for run in range(n):
                for who in ctx.order(run, peers):
                    if who == "S3 GET ×8 in flight":
                        c.drop_caches()
                        v = attempt(seq, who, raw_get)
                        c.log(f"   run {run + 1} {who}: {report.fmt(v)} MB/s")
                        continue
                    try:
                        d = cold(who)
                    except Exception as e:
                        for f in (ttfb, seq, rnd):
                            f.fail(who, str(e))
                        c.log(f"   {who}: {e}")
                        finish(who)
                        continue
                    t = attempt(ttfb, who, lambda: 1000 * c.first_byte(os.path.join(d, last)))
                    try:
                        if who == BAE:
                            b.evict_all(name)
                        else:
                            d = cold(who)
                    except Exception as e:
                        for f in (seq, rnd):
                            f.fail(who, str(e))
                        c.log(f"   {who}: {e}")
                        finish(who)
                        continue
                    c.drop_caches()

                    def one():
                        t0 = time.monotonic()
                        got = c.read_tree(d, ctx.files, limit)
                        return got / (time.monotonic() - t0) / 1e6
                    v = attempt(seq, who, one)

                    def rand():
                        c.read_file(os.path.join(d, last))  # cached first
                        return fio_randread(os.path.join(d, last), secs)
                    r = attempt(rnd, who, rand)
                    c.log(f"   run {run + 1} {who}: first byte {report.fmt(t)} ms, "
                          f"{report.fmt(v)} MB/s, {report.fmt(r)} IOPS")
                    finish(who)
        sampler.stop()
        ctx.note_rss(BAE, sampler.peak)
    finally:
        if b:
            b.remove()
        s3.close()


# ---------------------------------------------------------------- streaming

STREAM_RATE = 4_000_000  # bytes/s: the slow seeder's link (throttle.py)


def wait_path(path, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear in {timeout}s")
        time.sleep(0.01)


def stream_run(ctx, mnt, t0, up_lines, last, whole_timeout):
    """Opens the last track as soon as the tree shows it: (first byte s, fraction of
    the whole download's time at which the track was read completely)."""
    path = os.path.join(mnt, last)
    wait_path(path, 120)
    tfb = c.first_byte(path)
    c.read_file(path)
    t_track = time.monotonic() - t0
    total = ctx.size
    line = up_lines.wait("UP", timeout=whole_timeout,
                         pred=lambda l: int(l.split()[1]) >= total)
    t_all = float(line.split()[2]) - t0
    return tfb, t_track / t_all


def mode_streaming(ctx):
    n = ctx.runs
    tfb = ctx.figure("stream_ttfb", f"streaming, seeder behind a {STREAM_RATE // 1_000_000} "
                     "MB/s link: first byte of the last track after open", "s", "lower",
                     [("abs", "≤", 0.5)])
    frac = ctx.figure("stream_frac", "same: last track read completely at this fraction of "
                      "the whole download's time", "×", "lower", [("abs", "≤", 0.3)])
    # Found through a tracker, as a user's torrent is (and as btfs finds it below): the
    # first reply makes libtorrent dial at once, where a peer given with --peer waits
    # for its once-a-second connection round (up to 1 s more; see docs/performance-log.md).
    tracker, announce = start_tracker()
    torrent = c.make_torrent(ctx.album, os.path.join(ctx.work, "stream.torrent"), 256 * KiB,
                             tracker=announce)
    whole = ctx.size / STREAM_RATE * 3 + 60
    last = ctx.tracks[-1]

    def bae_run():
        b = ctx.bae("stream")
        seeder = link = None
        try:
            seeder, up, direct = start_seeder(torrent, ctx.data, announce=False)
            link, _addr = start_slow_link(direct, STREAM_RATE, announce, torrent)
            b.mount()
            sampler = c.RssSampler(b.pid)
            t0 = time.monotonic()
            b.run("add", torrent)
            f, x = stream_run(ctx, os.path.join(b.mnt, ctx.album_name), t0, up, last, whole)
            sampler.stop()
            ctx.note_rss(BAE, sampler.peak)
            tfb.add(BAE, f)
            frac.add(BAE, x)
            return f, x
        finally:
            c.stop(link)
            c.stop(seeder)
            b.remove()

    def btfs_run():
        d = os.path.join(ctx.work, "btfs")
        shutil.rmtree(d, ignore_errors=True)
        mnt = os.path.join(d, "mnt")
        os.makedirs(mnt)
        c.MOUNTS.append(mnt)
        # btfs turns DHT on (with public bootstrap routers) and has no switch for it:
        # run it, its tracker and its seeder in a network namespace that has loopback only.
        p = c.spawn(["unshare", "-n", "bash", os.path.join(c.HERE, "btfs_stack.sh"),
                     ctx.album, d, str(STREAM_RATE), str(256 * KiB)],
                    stdout=subprocess.PIPE, text=True)
        lines = c.PeerLine(p)
        try:
            lines.wait("PORT", timeout=300)
            btfs_pid = int(lines.wait("BTFS", timeout=30).split()[1])
            t0 = float(lines.wait("BTFS", timeout=30).split()[2])
            hw = c.RssSampler(btfs_pid)
            # btfs blocks a read until its pieces arrive, with no timeout of its own: read
            # in a thread, and past the deadline kill btfs so the read fails (ENOTCONN).
            out = {}

            def reader():
                try:
                    out["r"] = stream_run(ctx, os.path.join(mnt, ctx.album_name), t0, lines,
                                          last, whole)
                except Exception as e:
                    out["e"] = e
            th = threading.Thread(target=reader, daemon=True)
            th.start()
            try:
                th.join(whole + 30)
                if th.is_alive():
                    os.kill(btfs_pid, 9)
                    th.join(30)
                    raise RuntimeError(f"btfs: last track not read within {whole + 30:.0f} s")
                if "e" in out:
                    raise out["e"]
                f, x = out["r"]
            finally:
                hw.stop()
                ctx.note_rss("btfs", hw.peak)
            tfb.add("btfs", f)
            frac.add("btfs", x)
            return f, x
        finally:
            c.fuse_umount(mnt)
            c.stop(p)
            shutil.rmtree(d, ignore_errors=True)

    try:
        with c.heavy_lock(tfb.title):
            for run in range(n):
                for who in ctx.order(run, [BAE, "btfs"]):
                    try:
                        f, x = bae_run() if who == BAE else btfs_run()
                        c.log(f"   run {run + 1} {who}: first byte {f:.3f} s, last track "
                              f"done at {x:.2f} of the download")
                    except Exception as e:
                        c.log(f"   run {run + 1} {who}: {e}")
                        tfb.fail(who, str(e))
                        frac.fail(who, str(e))
    finally:
        c.stop(tracker)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["downloads", "reads", "remote", "streaming", "library",
                                     "all"])
    ap.add_argument("--quick", action="store_true", help="small album, fewer seconds")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--album-mb", type=int, default=None,
                    help="album size in MiB (default 300, --quick 64)")
    ap.add_argument("--big", action="store_true",
                    help="library: also 20,000 albums of 1 GB (long)")
    ap.add_argument("--bounded-only", action="store_true",
                    help="downloads: only the bounded-cache case (issue 11)")
    ap.add_argument("--seed-only", action="store_true",
                    help="downloads: only the stock leecher downloading from bae")
    ap.add_argument("--no-bounded", action="store_true",
                    help="downloads: leave the bounded-cache case out")
    ap.add_argument("--libs", default=None,
                    help="library: comma-separated sizes (1tb,10tb,50tb,20k)")
    ap.add_argument("--skip", default="",
                    help="comma-separated contenders to leave out (e.g. btfs,aria2c)")
    ap.add_argument("--bae", required=True)
    ap.add_argument("--s3-server", required=True)
    ap.add_argument("--fault-proxy", default=None,
                    help="examples/fault_proxy (downloads: the slow-upload-link case)")
    ap.add_argument("--work", default="/var/tmp/bae-bench")
    ap.add_argument("--out", default=os.path.join(c.HERE, "results"))
    args = ap.parse_args()
    if args.album_mb is None:
        args.album_mb = 64 if args.quick else 300
    c.install_cleanup()
    ctx = Ctx(args)
    started = datetime.datetime.now(datetime.timezone.utc)
    c.log(f"album: {len(ctx.tracks)} tracks, {ctx.size / 1e6:.0f} MB; {args.runs} runs each; "
          f"work dir {ctx.work}")
    modes = (["downloads", "reads", "remote", "streaming", "library"] if args.mode == "all"
             else [args.mode])
    lib_tables = []
    for m in modes:
        c.log(f"== {m}")
        try:
            if m == "library":
                import library
                lib_tables.append(library.run(ctx))
            else:
                globals()["mode_" + m](ctx)
        except Exception as e:
            c.log(f"!! mode {m} failed: {e}")
            ctx.figures.append(Figure(f"{m}_failed", f"{m}: FAILED ({str(e)[:80]})", "", "higher"))
        finally:
            c.cleanup()
    if ctx.rss.values:
        peers = [p for p in ctx.rss.peers()]
        ctx.rss.targets = [("abs", "≤", 150)]
        ctx.rss.title = "peak RSS (largest of the runs above)"
        for k in list(ctx.rss.values):
            ctx.rss.values[k] = [max(ctx.rss.values[k])]
        if peers or BAE in ctx.rss.values:
            ctx.figures.append(ctx.rss)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    meta = {"started": started.isoformat(), "mode": args.mode, "quick": args.quick,
            "runs": args.runs, "album_bytes": ctx.size, "tracks": len(ctx.tracks),
            "host": os.uname().nodename, "cpus": os.cpu_count(),
            "bae": args.bae, "library": [t["json"] for t in lib_tables]}
    out_json = os.path.join(args.out, f"{stamp}-{args.mode}{'-quick' if args.quick else ''}.json")
    report.write_json(out_json, meta, ctx.figures)
    png = out_json[:-5] + ".png"
    drawn = report.chart(png, ctx.figures, f"bae vs peers, {args.mode}, {stamp}, "
                         f"album {ctx.size / 1e6:.0f} MB, {args.runs} runs")
    print()
    print(f"bae benchmark: mode {args.mode}{' (quick)' if args.quick else ''}, album "
          f"{ctx.size / 1e6:.0f} MB in {len(ctx.tracks)} tracks, {args.runs} runs each, "
          "min / median / max; ratio = bae median / peer median")
    if ctx.figures:
        print(report.table(ctx.figures))
    for t in lib_tables:
        print()
        print(t["text"])
    missed = sum(1 for f in ctx.figures for _, ok, _ in f.checks() if ok is False)
    missed += sum(t["missed"] for t in lib_tables)
    print(f"\nJSON: {out_json}" + (f"\nchart: {png}" if drawn else ""))
    print(f"targets missed: {missed}" + (" (see ✘ above)" if missed else ""))
    with open(out_json[:-5] + ".md", "w") as f:
        if ctx.figures:
            f.write(report.markdown(ctx.figures) + "\n")
        for t in lib_tables:
            f.write("\n" + t["markdown"] + "\n")


if __name__ == "__main__":
    main()
