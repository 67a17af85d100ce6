"""Per-patch objects on Cloud Storage: objects/s and storage operations per object, the former
way (a temporary object, then Beam's rename = copy + delete, one file after another) against
the new one (one upload straight to the final name, from transforms/uploads.py's bounded pool),
side by side in one run against the local Cloud Storage emulator (gcp-storage-emulator, in
memory, on 127.0.0.1, in its own process, made to serve requests in parallel as Cloud Storage
does, with `--latency-ms` added to each request as a network round trip would).

The emulator is a Python server on the same 2 cores, so absolute rates are far below real Cloud
Storage; the ratio and the operation counts (object creations + deletions per file, counted by
the emulator) are the point. `--latency-ms 0` shows the CPU-bound case.

    .venv/bin/python benchmarks/gcs_writes.py [--objects 600] [--kb 16] [--latency-ms 20] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import socket
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "pixelbeam-bench"


def serve(port: int, latency_ms: float) -> None:
    """The emulator in this (child) process: threaded (it serves one request at a time
    otherwise, unlike Cloud Storage), each request answered after `latency_ms` (waited in
    parallel; the emulator's own work stays one request at a time, as it is not thread-safe); counts object
    creations and deletions, printed as JSON for each line read on stdin."""
    import json
    import threading
    from http import server as http_server
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.storage import Storage
    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
    emulator.server.HTTPServer = http_server.ThreadingHTTPServer
    ops, lock = collections.Counter(), threading.Lock()
    create, delete, handle = Storage.create_file, Storage.delete_file, emulator.Router.handle

    def counted(fn, key):
        def wrapper(self, *args, **kwargs):
            with lock:
                ops[key] += 1
            return fn(self, *args, **kwargs)
        return wrapper

    serial = threading.Lock()  # the emulator's storage is not thread-safe: requests wait in parallel, run one by one

    def slow_handle(self, method):
        time.sleep(latency_ms / 1000)
        with serial:
            return handle(self, method)

    Storage.create_file, Storage.delete_file = counted(create, "create"), counted(delete, "delete")
    emulator.Router.handle = slow_handle
    srv = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    srv.start()
    print("ready", flush=True)
    for _ in sys.stdin:
        with lock:
            print(json.dumps(dict(ops)), flush=True)
            ops.clear()
    srv.stop()


class Emulator:
    """The child process of `serve`, behind STORAGE_EMULATOR_HOST; `operations()` reads and resets its counts."""

    def __init__(self, latency_ms: float):
        import subprocess
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(latency_ms)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
        from apache_beam.internal.gcp.auth import _Credentials  # anonymous client (see tests/test_gcs.py)
        _Credentials._credentials_init, _Credentials._credentials = True, None

    def operations(self) -> dict:
        import json
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait()


def former_way(paths, data):
    """What WritePatchFiles did: each file to a temporary object, then renamed, one by one."""
    from apache_beam.io.filesystems import FileSystems
    for path in paths:
        directory, name = FileSystems.split(path)
        tmp = FileSystems.join(directory, f".tmp-{uuid.uuid4().hex}-{name}")
        with FileSystems.create(tmp) as f:
            f.write(data)
        FileSystems.rename([tmp], [path])


def new_way(paths, data, threads=16):
    """What WritePatchFiles does now on gs://: one upload per file from a bounded pool."""
    from pixelbeam.transforms.uploads import UploadPool
    pool = UploadPool(threads)
    errors = [e for batch in [pool.submit(p, [(p, data)]) for p in paths] + [pool.drain()]
              for _, e in batch if e is not None]
    pool.close()
    if errors:
        raise errors[0]


def measure(fn, prefix, objects, data, emulator):
    paths = [f"gs://{BUCKET}/{prefix}/npy/epsg32618_r{i}_c0.npy" for i in range(objects)]
    emulator.operations()
    wall, cpu = time.perf_counter(), time.process_time()
    fn(paths, data)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ops = emulator.operations()
    return {"objects_per_s": objects / wall, "wall_s": wall, "cpu_s": cpu,
            "ops_per_object": (ops.get("create", 0) + ops.get("delete", 0)) / objects}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=600)
    parser.add_argument("--kb", type=int, default=16, help="size of each object (KiB)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added to every request (a network round trip)")
    parser.add_argument("--quick", action="store_true", help="100 objects")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(int(args.serve[0]), float(args.serve[1]))
        return 0
    objects = 100 if args.quick else args.objects
    sys.path.insert(0, ROOT)
    emulator = Emulator(args.latency_ms)
    data = os.urandom(args.kb * 1024)
    try:
        new_way([f"gs://{BUCKET}/warm/x{i}" for i in range(4)], data)  # clients and connections made once
        old = measure(former_way, "old", objects, data, emulator)
        new = measure(new_way, "new", objects, data, emulator)
    finally:
        emulator.stop()
    print(f"{objects} objects of {args.kb} KiB to the Cloud Storage emulator (threaded, {args.latency_ms:g} ms "
          "added per request)")
    print(f"{'way':<34} {'objects/s':>10} {'wall s':>8} {'CPU s':>7} {'ops/object':>11}")
    for name, r in (("temp + rename, sequential (former)", old), ("final name, pool of 16 (new)", new)):
        print(f"{name:<34} {r['objects_per_s']:>10.1f} {r['wall_s']:>8.2f} {r['cpu_s']:>7.2f} {r['ops_per_object']:>11.1f}")
    print(f"ratio new/former objects/s: {new['objects_per_s'] / old['objects_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
