#!/usr/bin/python3
"""A slow uplink for the streaming benchmark: a TCP relay on 127.0.0.1 in front of a peer
whose bytes towards the client are paced at RATE bytes/s, all connections sharing the
one link; the other direction passes unpaced. Its socket buffers are small (64 KiB), as
a modem's queue is short: what a client cancels has not left the peer yet.

A seeder capped with libtorrent's own rate limiter sends nothing for ~1.3 s on each
new connection (its quota is handed out per tick), whoever the leecher is; a capped link
has no such start-up stall, and is what "a slow seeder" is on a real network.

usage: throttle.py UPSTREAM_PORT RATE [ANNOUNCE_URL TORRENT] [--bind ADDR]
Prints "PORT <n>" once listening on ADDR (default 127.0.0.1). With ANNOUNCE_URL and
TORRENT, announces its own address for that torrent to the tracker, from ADDR (so clients
that only know the tracker come through it). Runs until killed.
"""
import http.client
import socket
import sys
import threading
import time
import urllib.parse

BUF = 64 * 1024
SLICE = 16 * 1024


class Link:
    """One shared link: each slice of bytes waits for its turn at RATE."""

    def __init__(self, rate):
        self.rate = rate
        self.lock = threading.Lock()
        self.free_at = time.monotonic()

    def wait(self, n):
        with self.lock:
            now = time.monotonic()
            start = max(now, self.free_at)
            self.free_at = start + n / self.rate
        if start > now:
            time.sleep(start - now)


def small(s):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)


def pipe(src, dst, link):
    try:
        while True:
            b = src.recv(SLICE)
            if not b:
                break
            if link:
                link.wait(len(b))
            dst.sendall(b)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def announce(url, torrent, addr, port):
    import libtorrent as lt
    ih = lt.torrent_info(torrent).info_hash().to_bytes()
    q = urllib.parse.urlencode({"info_hash": ih, "peer_id": b"-BT0001-throttlerelay",
                                "port": port, "uploaded": 0, "downloaded": 0, "left": 0,
                                "compact": 1, "event": "started"})
    u = urllib.parse.urlsplit(url)
    # Sent from ADDR: the tracker lists the address an announce comes from.
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10, source_address=(addr, 0))
    conn.request("GET", f"{u.path}?{q}")
    conn.getresponse().read()
    conn.close()


def main():
    args = sys.argv[1:]
    addr = "127.0.0.1"
    if "--bind" in args:
        i = args.index("--bind")
        addr = args[i + 1]
        del args[i:i + 2]
    upstream, rate = int(args[0]), float(args[1])
    link = Link(rate)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    small(srv)  # accepted sockets inherit the buffer sizes
    srv.bind((addr, 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    if len(args) > 3:
        announce(args[2], args[3], addr, port)
    print("PORT", port, flush=True)
    while True:
        c, _ = srv.accept()
        u = socket.socket()
        small(u)
        try:
            u.connect(("127.0.0.1", upstream))
        except OSError:
            c.close()
            continue
        small(c)
        threading.Thread(target=pipe, args=(c, u, None), daemon=True).start()
        threading.Thread(target=pipe, args=(u, c, link), daemon=True).start()


if __name__ == "__main__":
    main()
