"""The S3 server's own throughput: ranged GETs, and PUTs of objects the size of bae's
sealed chunks (AWS signature v4, path style), with a fixed number of requests in flight.
These are the ceilings bae over that server can approach, measured in the same run.
"""
import datetime
import hashlib
import hmac
import http.client
import queue
import threading
import time
import urllib.parse


def _sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _headers(host, path, rng, access, secret, region="us-east-1", method="GET",
             payload=EMPTY_SHA256):
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    if rng:
        headers["range"] = rng
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, path, "",
                           "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
                           signed, payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    k = _sign(("AWS4" + secret).encode(), day)
    for part in (region, "s3", "aws4_request"):
        k = _sign(k, part)
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access}/{scope}, "
                                f"SignedHeaders={signed}, Signature={sig}")
    return headers


def get_throughput(endpoint, bucket, objects, access, secret, in_flight=8,
                   range_size=1 << 20, limit=None):
    """GETs `objects` ([(key, size)]) in `range_size` ranges, `in_flight` at once, up to
    `limit` bytes in object order. Returns (bytes, seconds)."""
    u = urllib.parse.urlparse(endpoint)
    host = u.netloc
    jobs = queue.Queue()
    total = 0
    for key, size in objects:
        off = 0
        while off < size and (limit is None or total < limit):
            n = min(range_size, size - off)
            jobs.put((key, off, n))
            off += n
            total += n
    got = [0]
    errors = []
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        while True:
            try:
                key, off, n = jobs.get_nowait()
            except queue.Empty:
                conn.close()
                return
            path = "/" + bucket + "/" + urllib.parse.quote(key)
            h = _headers(host, path, f"bytes={off}-{off + n - 1}", access, secret)
            conn.request("GET", path, headers=h)
            r = conn.getresponse()
            body = r.read()
            if r.status not in (200, 206) or len(body) != n:
                with lock:
                    errors.append(f"GET {key} {off}+{n}: {r.status} {len(body)} bytes")
                return
            with lock:
                got[0] += n

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    if errors:
        raise RuntimeError(errors[0])
    return got[0], dt


def put_throughput(endpoint, bucket, prefix, object_size, count, access, secret,
                   in_flight=8):
    """PUTs `count` objects of `object_size` random bytes under `prefix`, `in_flight` at
    once (one body, hashed once: the client's own cost stays out of the figure).
    Returns (bytes, seconds)."""
    import os
    u = urllib.parse.urlparse(endpoint)
    host = u.netloc
    body = os.urandom(object_size)
    digest = hashlib.sha256(body).hexdigest()
    jobs = queue.Queue()
    for i in range(count):
        jobs.put(i)
    got = [0]
    errors = []
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        while True:
            try:
                i = jobs.get_nowait()
            except queue.Empty:
                conn.close()
                return
            path = f"/{bucket}/{prefix}/{i:08x}"
            h = _headers(host, path, None, access, secret, method="PUT", payload=digest)
            h["content-length"] = str(len(body))
            conn.request("PUT", path, body=body, headers=h)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                with lock:
                    errors.append(f"PUT {path}: {r.status}")
                return
            with lock:
                got[0] += len(body)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    if errors:
        raise RuntimeError(errors[0])
    return got[0], dt
