"""An OME-Zarr image segmented where it lies: on local disk vs on an HTTP server (127.0.0.1).

1. **Generate**: a :class:`segflow.synth_large.NucleiField` of ``--size`` x ``--size`` 8-bit
   pixels written as an OME-Zarr image (one level, ``--chunk``-px chunks, zarr's default
   compression) under a work folder.
2. **Serve** the work folder with Python's ``http.server`` in its own process on 127.0.0.1
   (threaded, HTTP/1.1 keep-alive, a listen backlog of 256; no ranged requests needed: every
   chunk is a file).
3. **Baseline: local.** A fresh process hashes the store (``segflow.ingest.sha256_file``, what
   listing does for the run's identity) and segments it with
   :func:`segflow.large.segment_streamed` (``otsu``, default tiling), reading it from disk.
4. **Remote.** The same from ``http://127.0.0.1:PORT/...`` (fsspec's HTTP filesystem; every
   chunk fetched by its own GET, nothing copied whole).
   Local and remote runs are interleaved ``--reps`` times; medians are reported with the
   ``ratio`` remote / local for hashing and for segmenting, each process's peak RSS (VmHWM) and
   the number of requests the server answered per remote run.

The label maps must agree: both runs report the object count and a digest of the objects'
boxes and areas, and the benchmark fails if they differ.

Usage: ``python benchmarks/remote_zarr.py [--size 4000] [--chunk 512] [--reps 3]``.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

HWM = "int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) / 1024"

RUN_SCRIPT = """
import hashlib, json, sys, time
from segflow import large, segmenters
from segflow.ingest import sha256_file
from segflow.sources import open_source
src = sys.argv[1]
t0 = time.perf_counter()
digest = sha256_file(src)
t_hash = time.perf_counter() - t0
t0 = time.perf_counter()
res = large.segment_streamed(open_source(src), segmenters.create("otsu"))
t_seg = time.perf_counter() - t0
boxes = hashlib.sha256(repr(sorted((o.bbox, o.area) for o in res.objects)).encode()).hexdigest()
print(json.dumps({"hash_s": t_hash, "segment_s": t_seg, "sha256": digest,
                  "n_objects": len(res.objects), "objects_digest": boxes, "peak_rss_mb": HWM}))
""".replace("HWM", HWM)

GEN_SCRIPT = """
import sys, zarr
from segflow.synth_large import NucleiField
size, chunk, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
field = NucleiField(size, size, spacing=40, radius=(4.0, 11.0), seed=11)
group = zarr.open_group(path, mode="w")
arr = group.create_array("0", shape=(size, size), chunks=(chunk, chunk), dtype="uint8")
for y in range(0, size, chunk):
    arr[y : y + chunk] = field.render(y=y, x=0, h=min(chunk, size - y), w=size)[0]
group.attrs["multiscales"] = [
    {"version": "0.4", "axes": ["y", "x"], "datasets": [{"path": "0"}]}
]
print(field.n_objects)
"""


# Python's http.server with what any production file server has: HTTP/1.1 keep-alive and a
# listen backlog above the 8-16 concurrent chunk requests zarr makes per strip (socketserver's
# default backlog of 5 drops connection attempts while the segmenting process holds both
# cores, and each dropped SYN costs a 1 s retransmit).
SERVER_SCRIPT = """
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256
port, root = int(sys.argv[1]), sys.argv[2]
Server(("127.0.0.1", port), functools.partial(Handler, directory=root)).serve_forever()
"""


def _child(script: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", script, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="segflow-remote-zarr-"))
    port = _free_port()
    log = work / "requests.log"
    server = None
    try:
        store = work / "slide.zarr"
        subprocess.run(
            [sys.executable, "-c", GEN_SCRIPT, str(args.size), str(args.chunk), str(store)],
            check=True,
            capture_output=True,
        )
        store_mb = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 2**20
        with open(log, "w") as fh:
            server = subprocess.Popen(
                [sys.executable, "-c", SERVER_SCRIPT, str(port), str(work)],
                stdout=subprocess.DEVNULL,
                stderr=fh,  # http.server logs each request on stderr
            )
        url = f"http://127.0.0.1:{port}/slide.zarr"
        for _ in range(50):  # wait until it answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        runs: dict[str, list[dict[str, Any]]] = {"local": [], "remote": []}
        requests: list[int] = []
        for _ in range(args.reps):
            runs["local"].append(_child(RUN_SCRIPT, str(store)))
            before = sum(1 for line in open(log) if '"GET ' in line)
            runs["remote"].append(_child(RUN_SCRIPT, url))
            requests.append(sum(1 for line in open(log) if '"GET ' in line) - before)
        first = runs["local"][0]
        for kind, results in runs.items():
            for r in results:
                same = (r["sha256"], r["n_objects"], r["objects_digest"]) == (
                    first["sha256"],
                    first["n_objects"],
                    first["objects_digest"],
                )
                if not same:
                    raise SystemExit(f"{kind} run disagrees with the local one: {r} vs {first}")

        def med(kind: str, key: str) -> float:
            return float(statistics.median(r[key] for r in runs[kind]))

        n_chunks = (-(-args.size // args.chunk)) ** 2
        result = {
            "benchmark": "remote_zarr",
            "size": args.size,
            "chunk": args.chunk,
            "chunks": n_chunks,
            "store_mb": round(store_mb, 1),
            "reps": args.reps,
            "n_objects": first["n_objects"],
            "local_hash_s": round(med("local", "hash_s"), 3),
            "remote_hash_s": round(med("remote", "hash_s"), 3),
            "hash_ratio": round(med("remote", "hash_s") / med("local", "hash_s"), 2),
            "local_segment_s": round(med("local", "segment_s"), 2),
            "remote_segment_s": round(med("remote", "segment_s"), 2),
            "segment_ratio": round(med("remote", "segment_s") / med("local", "segment_s"), 3),
            "local_peak_rss_mb": round(med("local", "peak_rss_mb"), 1),
            "remote_peak_rss_mb": round(med("remote", "peak_rss_mb"), 1),
            "remote_gets_per_run": int(statistics.median(requests)),
            "identical_results": True,
        }
        print(json.dumps(result))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
