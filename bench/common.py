"""Shared machinery of the benchmark harness: child processes and mounts that are always
cleaned up (by PID, `fusermount3 -u`), the bae CLI in a throw-away library, the heavy-job
lock, page-cache drops, memory sampling and the synthetic album.

Invariant: every process this harness starts is registered in PROCS and every mount in
MOUNTS before anything can fail, so `cleanup()` (atexit and on SIGINT/SIGTERM) leaves
nothing behind.
"""
import fcntl
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

PY = "/usr/bin/python3"  # the distribution's python: it has libtorrent and matplotlib
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LOCK = "/tmp/bae-heavy.lock"
MiB = 1 << 20

PROCS = []   # subprocess.Popen, each in its own process group
MOUNTS = []  # mount points to detach at exit
BAE_HOMES = []  # libraries whose daemon must be stopped at exit


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes and mounts

def spawn(args, **kw):
    """Starts a child in its own session (so its whole group can be killed by its id)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    p = subprocess.Popen(args, start_new_session=True, **kw)
    PROCS.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=10):
    """Stops `p`'s whole process group and waits for all of it, also when `p` itself has
    already exited: what it started in the background (a script's seeder, link and
    tracker) can outlive it. SIGKILL after `timeout` s."""
    if p is None or getattr(p, "bae_stopped", False):
        return
    # Once stopped, never signalled again: its group id could belong to others by then.
    p.bae_stopped = True
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while True:
        p.poll()  # reaps the leader, whose zombie would keep the group alive
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def fuse_umount(path):
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", path], stderr=subprocess.DEVNULL)
    if is_mounted(path):
        subprocess.run(["fusermount3", "-uz", path], stderr=subprocess.DEVNULL)


def wait_mounted(path, timeout=60, proc=None):
    deadline = time.monotonic() + timeout
    while not is_mounted(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mount process for {path} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} not mounted after {timeout}s")
        time.sleep(0.02)


def cleanup():
    for home in list(BAE_HOMES):
        pidfile = os.path.join(home, "daemon.pid")
        try:
            pid = int(open(pidfile).read().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
    for m in list(MOUNTS):
        fuse_umount(m)
    for p in list(PROCS):
        stop(p, timeout=5)


def install_cleanup():
    import atexit
    atexit.register(cleanup)

    def on_signal(sig, _frame):
        cleanup()
        sys.exit(128 + sig)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


# ---------------------------------------------------------------- lock, caches, memory

@contextmanager
def heavy_lock(what):
    """Holds the machine-wide heavy-job lock while one figure is measured, so builds of
    other agents do not run in the middle of a measurement."""
    t0 = time.monotonic()
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.monotonic() - t0
        if waited > 1:
            log(f"   (waited {waited:.0f}s for {LOCK})")
        log(f"-- {what}")
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def drop_caches():
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        log(f"   warning: cannot drop the page cache: {e}")
        return False


def proc_status(pid, key):
    """VmRSS / VmHWM of a process in bytes, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler:
    """Samples a process's VmRSS every `interval` s in a thread; `peak` also folds in the
    kernel's own high-water mark (VmHWM) so a spike between samples is not missed."""

    def __init__(self, pid, interval=0.1):
        self.pid, self.interval = pid, interval
        self.samples = []
        self.hwm = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            rss = proc_status(self.pid, "VmRSS")
            hwm = proc_status(self.pid, "VmHWM")
            if rss is None:
                return
            self.samples.append((time.monotonic(), rss))
            self.hwm = max(self.hwm, hwm or 0)
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._t.join()
        return self

    @property
    def peak(self):
        return max([self.hwm] + [s for _, s in self.samples])

    @property
    def last(self):
        return self.samples[-1][1] if self.samples else None


def tree_size(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


# ---------------------------------------------------------------- bae

class Bae:
    """One throw-away bae library driven through its CLI, like a user would."""

    def __init__(self, binary, work, name, remote_args=(), cache_size="4GiB", env=None,
                 extra_config=None):
        self.bin = binary
        self.dir = os.path.join(work, name)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.home = os.path.join(self.dir, "home")
        self.mnt = os.path.join(self.dir, "mnt")
        os.makedirs(self.mnt)
        self.env = dict(os.environ, BAE_HOME=self.home, **(env or {}))
        BAE_HOMES.append(self.home)
        self.run("init", "--cache-size", cache_size, *remote_args)
        cfg = {"dht": "false", "lsd": "false", "upnp": "false", "natpmp": "false",
               "utp": "false", "listen_port": "0", "listen_address": '"127.0.0.1"'}
        cfg.update(extra_config or {})
        self._configure(cfg)

    def _configure(self, keys):
        path = os.path.join(self.home, "config.toml")
        lines = open(path).read().splitlines()
        for k, v in keys.items():
            for i, line in enumerate(lines):
                if line.split("=")[0].strip() == k:
                    lines[i] = f"{k} = {v}"
                    break
            else:
                lines.insert(0, f"{k} = {v}")
        open(path, "w").write("\n".join(lines) + "\n")

    def run(self, *args, check=True, timeout=600):
        r = subprocess.run([self.bin, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"bae {' '.join(args)} failed ({r.returncode}): "
                               f"{r.stderr.strip()}\n{self.log_tail()}")
        return r.stdout

    def log_tail(self, n=15):
        try:
            return "".join(open(os.path.join(self.home, "daemon.log")).readlines()[-n:])
        except OSError:
            return ""

    def mount(self):
        MOUNTS.append(self.mnt)
        t0 = time.monotonic()
        self.run("mount", self.mnt)
        return time.monotonic() - t0

    def umount(self):
        t0 = time.monotonic()
        self.run("umount", self.mnt)
        dt = time.monotonic() - t0
        if self.mnt in MOUNTS:
            MOUNTS.remove(self.mnt)
        return dt

    @property
    def pid(self):
        return int(open(os.path.join(self.home, "daemon.pid")).read().strip())

    def status(self):
        return json.loads(self.run("status", "--json"))

    def torrent(self):
        return self.status()["torrents"][0]

    def wait(self, what, pred, timeout=600, interval=0.05):
        deadline = time.monotonic() + timeout
        while True:
            s = self.status()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {json.dumps(s)[:800]}")
            time.sleep(interval)

    def wait_uploaded(self, timeout=900):
        def done(s):
            up = s.get("uploader") or {}
            ts = s["torrents"]
            return (ts and all(t["chunks_uploaded"] == t["chunks_total"] > 0 for t in ts)
                    and up.get("queued", 1) == 0 and up.get("in_flight", 1) == 0)
        return self.wait("every chunk uploaded", done, timeout, 0.2)

    def evict_all(self, name):
        """Unpins the album and drops every local chunk (all are safe in the remote)."""
        self.run("seed", name, "on", "--no-pin")
        self.run("evict")
        s = self.status()
        left = sum(t["chunks_local"] for t in s["torrents"])
        if left:
            raise RuntimeError(f"{left} chunks still local after evict")

    def stop(self):
        if is_mounted(self.mnt):
            try:
                self.umount()
            except Exception as e:  # fall back to the hard way, the figure is lost anyway
                log(f"   umount failed: {e}")
        cleanup_home(self.home)

    def remove(self):
        self.stop()
        # BAE_BENCH_LOGS=DIR keeps each run's daemon log (run with BAE_LOG=debug to see why
        # a figure is what it is).
        keep = os.environ.get("BAE_BENCH_LOGS")
        if keep:
            os.makedirs(keep, exist_ok=True)
            src = os.path.join(self.home, "daemon.log")
            dst = os.path.join(keep, f"{os.path.basename(self.dir)}-{time.time():.0f}.log")
            try:
                shutil.copyfile(src, dst)
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def cleanup_home(home):
    pidfile = os.path.join(home, "daemon.pid")
    if os.path.exists(pidfile):
        try:
            pid = int(open(pidfile).read().strip())
            os.kill(pid, 0)
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
    mnt = os.path.join(os.path.dirname(home), "mnt")
    fuse_umount(mnt)
    if home in BAE_HOMES:
        BAE_HOMES.remove(home)


# ---------------------------------------------------------------- data

def make_album(root, total_bytes, tracks=12, seed=7):
    """A FLAC-like album: `tracks` files of incompressible bytes behind a FLAC stream
    header, of uneven sizes summing to about `total_bytes`, plus cover, cue and log.
    Returns the album directory (reused if it already has the right size)."""
    name = "Bench Artist - Synthetic Album (2026)"
    album = os.path.join(root, name)
    stamp = os.path.join(root, ".album-size")
    if os.path.exists(stamp) and open(stamp).read() == str(total_bytes):
        return album
    shutil.rmtree(album, ignore_errors=True)
    os.makedirs(album)
    rng = random.Random(seed)
    weights = [rng.uniform(0.6, 1.4) for _ in range(tracks)]
    scale = (total_bytes - 2 * MiB) / sum(weights)
    cue = 'PERFORMER "Bench Artist"\nTITLE "Synthetic Album"\n'
    for i, w in enumerate(weights, 1):
        fname = f"{i:02d} - Track {i}.flac"
        size = int(w * scale)
        with open(os.path.join(album, fname), "wb") as f:
            f.write(b"fLaC\x00\x00\x00\x22" + os.urandom(34))
            left = size - 42
            while left > 0:
                n = min(left, 8 * MiB)
                f.write(os.urandom(n))
                left -= n
        cue += f'FILE "{fname}" WAVE\n  TRACK {i:02d} AUDIO\n    INDEX 01 00:00:00\n'
    with open(os.path.join(album, "cover.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + os.urandom(2 * MiB - 300 * 1024))
    open(os.path.join(album, "album.cue"), "w").write(cue)
    open(os.path.join(album, "rip.log"), "w").write("Exact Audio Copy V1.6 - bench\n" * 200)
    open(stamp, "w").write(str(total_bytes))
    return album


def album_tracks(album):
    return sorted(f for f in os.listdir(album) if f.endswith(".flac"))


def album_size(album):
    return tree_size(album)


def make_torrent(album, out, piece_len, mode="v1", tracker=None):
    args = [PY, os.path.join(REPO, "tests/peers/make_torrent.py"), album, out,
            str(piece_len), mode]
    if tracker:
        args.append(tracker)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return out


def read_file(path, bufsize=MiB, limit=None):
    """Reads a file sequentially; returns the bytes read."""
    n = 0
    with open(path, "rb", buffering=0) as f:
        while limit is None or n < limit:
            b = f.read(bufsize if limit is None else min(bufsize, limit - n))
            if not b:
                break
            n += len(b)
    return n


def read_tree(root, files, limit=None):
    """Reads `files` (relative to root) in order, stopping after `limit` bytes."""
    n = 0
    for f in files:
        left = None if limit is None else limit - n
        if left is not None and left <= 0:
            break
        n += read_file(os.path.join(root, f), limit=left)
    return n


def first_byte(path, size=4096):
    t0 = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        b = f.read(size)
    dt = time.monotonic() - t0
    if len(b) != size:
        raise RuntimeError(f"short first read of {path}: {len(b)}")
    return dt


def stats(values):
    v = sorted(values)
    return {"min": v[0], "median": statistics.median(v), "max": v[-1], "runs": v}


class PeerLine:
    """Reads `KEY value` lines from a child's stdout in a thread."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.strip())
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait(self, prefix, timeout=120, pred=None):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for line in reversed(self.lines):
                    if line.startswith(prefix) and (pred is None or pred(line)):
                        return line
                if self.proc.poll() is not None and not any(
                        l.startswith(prefix) for l in self.lines):
                    raise RuntimeError(f"{self.proc.args[:3]} exited ({self.proc.returncode}) "
                                       f"before printing {prefix}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"timed out waiting for {prefix} from {self.proc.args[:3]}")
                self.cond.wait(min(left, 0.5))
