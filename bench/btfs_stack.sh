#!/usr/bin/env bash
# Runs inside `unshare -n` (loopback only): a tracker, a stock seeder behind a link of
# RATE bytes/s (throttle.py, which announces itself in the seeder's place), and btfs mounting the same album's torrent at DIR/mnt. btfs has DHT on with
# public routers and no switch for it; in this namespace nothing can leave the host.
# Prints the seeder's "PORT"/"UP" lines, then "BTFS <pid> <monotonic start>".
# usage: btfs_stack.sh ALBUM DIR RATE PIECE_LEN
set -euo pipefail
album=$1 dir=$2 rate=$3 piece=$4
here=$(cd "$(dirname "$0")" && pwd)
ip link set lo up
/usr/bin/python3 "$here/../tests/peers/tracker.py" > "$dir/tracker.out" &
for _ in $(seq 1 100); do grep -q PORT "$dir/tracker.out" 2>/dev/null && break; sleep 0.05; done
port=$(awk '/PORT/ {print $2}' "$dir/tracker.out")
/usr/bin/python3 "$here/../tests/peers/make_torrent.py" "$album" "$dir/btfs.torrent" "$piece" v1 \
  "http://127.0.0.1:$port/announce" > /dev/null
/usr/bin/python3 "$here/ltpeer.py" seed "$dir/btfs.torrent" "$(dirname "$album")" 0 --no-announce \
  | tee "$dir/seeder.out" &
for _ in $(seq 1 1200); do grep -q PORT "$dir/seeder.out" 2>/dev/null && break; sleep 0.05; done
seed_port=$(awk '/PORT/ {print $2; exit}' "$dir/seeder.out")
# Start btfs once the link has announced itself, so btfs's first announce finds it. The
# link gets an address of its own: btfs keeps one peer per IP address (libtorrent's
# allow_multiple_connections_per_ip is off, with no switch in btfs), and its own listen
# sockets on 127.0.0.1, which its announces and local discovery hand back to it, would
# take the link's place in its peer list; it would never dial the link.
/usr/bin/python3 "$here/throttle.py" "$seed_port" "$rate" "http://127.0.0.1:$port/announce" \
  "$dir/btfs.torrent" --bind 127.0.0.2 > "$dir/throttle.out" &
for _ in $(seq 1 200); do grep -q PORT "$dir/throttle.out" 2>/dev/null && break; sleep 0.05; done
mkdir -p "$dir/data"
t0=$(/usr/bin/python3 -c 'import time; print(time.monotonic())')
btfs -f --data-directory="$dir/data" --min-port=47000 --max-port=47100 \
  "$dir/btfs.torrent" "$dir/mnt" 2> "$dir/btfs.err" &
echo "BTFS $! $t0"
wait
