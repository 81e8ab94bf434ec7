#!/usr/bin/python3
"""Stock libtorrent (python3-libtorrent, default disk storage) as the benchmark's peer:
127.0.0.1 only, TCP only, DHT/LSD/UPnP/NAT-PMP off.

usage: ltpeer.py seed  TORRENT SAVE_DIR [UPLOAD_LIMIT_BYTES_PER_SEC] [--no-announce]
       ltpeer.py leech TORRENT SAVE_DIR HOST:PORT [--tick MS] [--files]
seed:  (a limit of 0 is none; --no-announce: to no tracker, for seeding behind a relay
       that announces itself) prints "PORT <n>" once seeding, then "UP <bytes> <monotonic s>" whenever its
       payload upload total changes (every 50 ms at most); runs until killed.
leech: prints "DONE <seconds from add to every piece verified>" and exits 0. --tick sets
       tick_interval (the default is 500 ms; peers are dialled on the tick). --files: prints
       "FILE <path under SAVE_DIR>" as each file completes, for a player reading them.
Default settings otherwise: this is the reference a user gets out of the box.
"""
import os
import sys
import time

import libtorrent as lt


# The session settings the tests' peer uses (loopback, TCP only, no DHT/LSD/UPnP/NAT-PMP).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "peers"))
from peer import session  # noqa: E402


def main():
    argv = [a for a in sys.argv if a != "--no-announce"]
    quiet = len(argv) != len(sys.argv)
    files = "--files" in argv
    argv = [a for a in argv if a != "--files"]
    tick = None
    if "--tick" in argv:
        i = argv.index("--tick")
        tick = int(argv[i + 1])
        del argv[i:i + 2]
    mode, torrent, save = argv[1], argv[2], argv[3]
    ses = session()
    if tick is not None:
        ses.apply_settings({"tick_interval": tick})
    if files:
        ses.apply_settings({"alert_mask": lt.alert_category.error | lt.alert_category.status
                            | lt.alert_category.file_progress})
    if mode == "seed" and len(argv) > 4 and int(argv[4]) > 0:
        # Peers on 127.0.0.1 are in libtorrent's unlimited "local" class: limit it too.
        limit = int(argv[4])
        ses.apply_settings({"upload_rate_limit": limit})
        local = ses.get_peer_class(lt.session.local_peer_class_id)
        local["upload_limit"] = limit
        local["ignore_unchoke_slots"] = False
        ses.set_peer_class(lt.session.local_peer_class_id, local)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = save
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    if quiet:
        params.trackers = []
        params.flags |= lt.torrent_flags.override_trackers
    t0 = time.monotonic()
    h = ses.add_torrent(params)
    if mode == "leech":
        host, port = argv[4].rsplit(":", 1)
        h.connect_peer((host, int(port)))
        last_dial = time.monotonic()
        while True:
            ses.wait_for_alert(20)
            for a in ses.pop_alerts():
                if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                    print("ERROR", a.message(), file=sys.stderr, flush=True)
                    sys.exit(2)
                if files and isinstance(a, lt.file_completed_alert):
                    print("FILE", params.ti.files().file_path(a.index), flush=True)
                if isinstance(a, lt.torrent_finished_alert):
                    print("DONE %.4f" % (time.monotonic() - t0), flush=True)
                    return
            st = h.status()
            if st.num_peers == 0 and time.monotonic() - last_dial > 1:
                h.connect_peer((host, int(port)))
                last_dial = time.monotonic()
    announced, uploaded = False, 0
    while True:
        for a in ses.pop_alerts():
            if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                print("ERROR", a.message(), file=sys.stderr, flush=True)
                sys.exit(2)
        st = h.status()
        if st.is_seeding and not announced:
            print("PORT", ses.listen_port(), flush=True)
            announced = True
        if announced and st.total_payload_upload != uploaded:
            uploaded = st.total_payload_upload
            print("UP %d %.4f" % (uploaded, time.monotonic()), flush=True)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
