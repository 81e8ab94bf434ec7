#!/usr/bin/python3
"""A malicious BitTorrent seeder: claims every piece and answers every request with
garbage. Speaks just enough of the v1 wire protocol (no extensions) for libtorrent.

usage: corrupt_seeder.py TORRENT
Listens on 127.0.0.1 (a free port), prints "PORT <n>", serves peers until killed.
"""
import hashlib
import socket
import struct
import sys
import threading

import libtorrent as lt


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


def serve(sock, info_hash, num_pieces):
    try:
        hs = recv_exact(sock, 68)
        if hs[28:48] != info_hash:
            return
        sock.sendall(b"\x13BitTorrent protocol" + b"\0" * 8 + info_hash + b"-XX0001-corruptpeer!")
        bits = bytearray((num_pieces + 7) // 8)
        for i in range(num_pieces):
            bits[i // 8] |= 0x80 >> (i % 8)
        sock.sendall(struct.pack(">IB", 1 + len(bits), 5) + bytes(bits))
        sock.sendall(struct.pack(">IB", 1, 1))  # unchoke
        while True:
            (length,) = struct.unpack(">I", recv_exact(sock, 4))
            if length == 0:
                continue
            msg = recv_exact(sock, length)
            if msg[0] == 6:  # request
                index, begin, size = struct.unpack(">III", msg[1:13])
                garbage = hashlib.sha256(msg).digest() * (size // 32 + 1)
                sock.sendall(struct.pack(">IBII", 9 + size, 7, index, begin) + garbage[:size])
    except (ConnectionError, OSError):
        pass
    finally:
        sock.close()


def main():
    ti = lt.torrent_info(sys.argv[1])
    info_hash = ti.info_hashes().v1.to_bytes()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    print("PORT", listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, info_hash, ti.num_pieces()), daemon=True).start()


if __name__ == "__main__":
    main()
