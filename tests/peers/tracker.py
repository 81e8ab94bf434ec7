#!/usr/bin/python3
"""A minimal HTTP BitTorrent tracker for tests on 127.0.0.1: every announce of an info
hash is answered with the other peers that announced it (compact form).

usage: tracker.py
Prints "PORT <n>" once listening on 127.0.0.1; serves until killed.
"""
import http.server
import socket
import struct
import threading
import urllib.parse

peers = {}  # info_hash bytes -> {(ip, port)}
lock = threading.Lock()


class Announce(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        # info_hash is raw bytes, percent-encoded: decode by hand, not as text.
        query = {}
        for pair in self.path.partition("?")[2].split("&"):
            key, _, value = pair.partition("=")
            query[key] = urllib.parse.unquote_to_bytes(value)
        try:
            info_hash = query["info_hash"]
            port = int(query["port"])
        except (KeyError, ValueError):
            return self.reply(b"d14:failure reason11:bad requeste")
        me = (self.client_address[0], port)
        with lock:
            swarm = peers.setdefault(info_hash, set())
            if query.get("event") == b"stopped":
                swarm.discard(me)
            else:
                swarm.add(me)
            others = [p for p in swarm if p != me]
        compact = b"".join(socket.inet_aton(ip) + struct.pack(">H", p) for ip, p in others)
        self.reply(b"d8:intervali5e12:min intervali1e5:peers%d:%se" % (len(compact), compact))

    def reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Announce)
    print("PORT", server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
