#!/usr/bin/python3
"""A python3-libtorrent peer (default disk storage) on 127.0.0.1, TCP only.

usage: peer.py seed    TORRENT|DIR SAVE_DIR [UPLOAD_LIMIT_BYTES_PER_SEC [LISTEN_PORT]]
       peer.py partial TORRENT SAVE_DIR
       peer.py leech   TORRENT SAVE_DIR HOST:PORT
seed:  checks SAVE_DIR's data (of every *.torrent in DIR), prints "PORT <n>" once seeding, then "UP <bytes>" each
       time its payload upload total changes, and runs until killed.
partial: like seed for data that is only partly there: "PORT <n>" once checked.
leech: downloads from HOST:PORT, prints "DONE" once every piece is verified and exits 0.
Errors go to stderr with a non-zero exit. No timeouts here: the test owns the deadline.
"""
import os
import sys
import time

import libtorrent as lt


def session(port=0):
    return lt.session({
        "listen_interfaces": "127.0.0.1:%d" % port,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        # A library's worth of torrents from one peer: a connection per torrent.
        "connections_limit": 10000,
        "alert_mask": lt.alert_category.error | lt.alert_category.status,
    })


def main():
    mode, torrent, save = sys.argv[1], sys.argv[2], sys.argv[3]
    port = int(sys.argv[5]) if mode == "seed" and len(sys.argv) > 5 else 0
    ses = session(port)
    partial = mode == "partial"
    if partial:
        mode = "seed"
    if mode == "seed" and len(sys.argv) > 4:
        # A slow seeder lets tests read while the download is still going.
        # Peers on 127.0.0.1 are in libtorrent's unlimited "local" class: limit it too.
        limit = int(sys.argv[4])
        ses.apply_settings({"upload_rate_limit": limit})
        local = ses.get_peer_class(lt.session.local_peer_class_id)
        local["upload_limit"] = limit
        local["ignore_unchoke_slots"] = False
        ses.set_peer_class(lt.session.local_peer_class_id, local)
    if os.path.isdir(torrent):
        files = sorted(os.path.join(torrent, f) for f in os.listdir(torrent) if f.endswith(".torrent"))
    else:
        files = [torrent]
    handles = []
    for f in files:
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(f)
        params.save_path = save
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        handles.append(ses.add_torrent(params))
    h = handles[0]
    if mode == "leech":
        host, port = sys.argv[4].rsplit(":", 1)
        h.connect_peer((host, int(port)))
    announced = False
    uploaded = 0
    last_dial = time.monotonic()
    while True:
        for a in ses.pop_alerts():
            if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                print("ERROR", a.message(), file=sys.stderr, flush=True)
                sys.exit(2)
        st = h.status()
        if len(handles) > 1:
            statuses = [x.status() for x in handles]
            all_seeding = all(x.is_seeding for x in statuses)
            total_up = sum(x.total_payload_upload for x in statuses)
        else:
            all_seeding = st.is_seeding
            total_up = st.total_payload_upload
        checked = st.state not in (
            lt.torrent_status.checking_files,
            lt.torrent_status.checking_resume_data,
        )
        if mode == "seed" and (all_seeding or (partial and checked)) and not announced:
            print("PORT", ses.listen_port(), flush=True)
            announced = True
        if mode == "seed" and announced and total_up != uploaded:
            uploaded = total_up
            print("UP", uploaded, flush=True)
        if mode == "leech" and st.is_seeding:
            print("DONE", flush=True)
            return
        if mode == "leech" and st.num_peers == 0 and time.monotonic() - last_dial > 2:
            # Dial again if the connection dropped (e.g. bae was still checking).
            h.connect_peer((host, int(port)))
            last_dial = time.monotonic()
        time.sleep(0.1 if len(handles) == 1 else 1.0)


if __name__ == "__main__":
    main()
