#!/usr/bin/python3
"""Makes a .torrent of a directory with python3-libtorrent (a third-party creator).

usage: make_torrent.py DIR OUT.torrent PIECE_LEN MODE [TRACKER_URL]
MODE: hybrid (v1+v2, pad files), v2 (v2 only), v1pad (v1 with pad files), v1 (plain v1).
Prints the torrent's magnet link.
"""
import os
import sys

import libtorrent as lt


def main():
    src, out, piece_len, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    flags = {
        "hybrid": 0,
        "v2": lt.create_torrent.v2_only,
        "v1pad": lt.create_torrent.v1_only | lt.create_torrent.canonical_files,
        "v1": lt.create_torrent.v1_only,
    }[mode]
    fs = lt.file_storage()
    lt.add_files(fs, os.path.abspath(src))
    ct = lt.create_torrent(fs, piece_len, flags=flags)
    if len(sys.argv) > 5:
        ct.add_tracker(sys.argv[5])
    lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(src)))
    data = lt.bencode(ct.generate())
    with open(out, "wb") as f:
        f.write(bytes(data))
    print(lt.make_magnet_uri(lt.torrent_info(out)), flush=True)


if __name__ == "__main__":
    main()
