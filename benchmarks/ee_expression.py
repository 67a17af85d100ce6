"""A large Earth Engine expression: pixelbeam beside an ideal client sending the same
pre-serialized expression, side by side in one run.

The expression is a 50-image collection (`ee.ImageCollection([ee.Image(id), ...])`, each image
its own `Image.load`), mapped with a cloud mask (QA60 bits 10 and 11), reduced by `median`,
plus NDVI (`normalizedDifference`): ~50 x 8 nodes, what `image.serialize()` writes for a
composite over an explicit image list. pixelbeam reads it from `source.expression_json` and
serializes each request expression (the image, its band selection and validity band) once per
worker process. A local Earth Engine REST emulator runs in its own process (latency L s per
request, concurrency quota C; its images are data/RGB.byte.tif's B4, B3, B2 with data/ee's
B8, QA60, SCL stand-ins). Every client fetches the same N one-request 16x16 px patches, each
in its own process:

  ideal       (run first and last; the faster run is the reference) exactly C threads posting `image:computePixels` with a `requests` session: the
              body is pixelbeam's own request expression, JSON-encoded once, with each patch's
              grid spliced in; the NPY answer is decoded and checked.
  pixelbeam   `python -m pixelbeam run CONFIG` (the real job, local runner, NPY only) with
              fetch.max_concurrent_requests C and max_requests_per_second 10*C/L.
  ee client   C threads calling `ee.data.computePixels({"expression": ee.Image, ...})`, which
              re-serializes the graph on every call (what a notebook does).

`seconds` and `patches/s` are measured on the emulator (its stats polled every 50 ms): from the
first pixel request of the bulk fetch to the last successful answer (start-up, planning and
pixelbeam's 1x1 px probe excluded). `CPU s / 1,000 patches` is the user + system CPU time of
the whole client process (interpreter, imports, Beam and planning included), from
`resource.getrusage(RUSAGE_CHILDREN)` around it, per 1,000 delivered patches.

    .venv/bin/python benchmarks/ee_expression.py            # L 2 s, C 16, 320 patches (~3 min)
    .venv/bin/python benchmarks/ee_expression.py --quick    # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import io
import json
import os
import resource
import shutil
import sys
import tempfile
import threading

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ee_throughput  # noqa: E402  (the emulator process, its stats sampler, the patch layout)

ROOT = ee_throughput.ROOT
COLLECTION = "BENCH/S2"
IMAGES = 50
S2_DATES = ("20200105", "20200115", "20200125")
BANDS = ["B4", "B3", "B2", "B8", "NDVI"]


def write_catalog(path: str) -> list[str]:
    """50 dated images of RGB.byte.tif's bands beside data/ee's B8/QA60/SCL (cycled)."""
    ids = [f"{COLLECTION}/img{i:02d}" for i in range(IMAGES)]
    members = [{"id": image_id, "time_start": f"2020-{1 + i // 28:02d}-{1 + i % 28:02d}",
                "files": [{"path": ee_throughput.SCENE, "bands": ["B4", "B3", "B2"]},
                          {"path": os.path.join(ROOT, "data", "ee", f"s2_{S2_DATES[i % 3]}.tif"),
                           "bands": ["B8", "QA60", "SCL"]}]}
                   for i, image_id in enumerate(ids)]
    with open(path, "w") as f:
        json.dump({"collections": {COLLECTION: members}}, f)
    return ids


def big_expression(ids: list[str]):
    """The 50-image mapped, masked, reduced expression (an ee.Image; the client initialized)."""
    import ee

    def mask_clouds(image):
        qa = image.select("QA60")
        return image.updateMask(qa.bitwiseAnd(1 << 10).eq(0).And(qa.bitwiseAnd(1 << 11).eq(0)))
    composite = ee.ImageCollection([ee.Image(i) for i in ids]).map(mask_clouds).select(["B4", "B3", "B2", "B8"]).median()
    return composite.addBands(composite.normalizedDifference(["B8", "B4"]).rename("NDVI"))


# -- clients (each runs in its own process: `--client KIND`) -------------------------------------

def run_ideal(url: str, job: dict, threads: int) -> dict:
    """C threads posting the pre-encoded body; a failed patch is retried at once (50 tries)."""
    import requests
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=threads))
    prefix = ('{"expression":' + json.dumps(job["expression"]) + ',"fileFormat":"NPY","bandIds":'
              + json.dumps(job["band_ids"]) + ',"grid":').encode()
    endpoint = f"{url}/v1/projects/bench/image:computePixels"
    errors, lock = {}, threading.Lock()

    def fetch(grid) -> bool:
        for _ in range(50):
            try:
                r = session.post(endpoint, data=prefix + json.dumps(grid).encode() + b"}",
                                 headers={"Content-Type": "application/json"}, timeout=60)
                if r.status_code == 200:
                    return check(r.content, grid, job["band_ids"])
                reason = str(r.status_code)
            except requests.RequestException as e:
                reason = type(e).__name__
            with lock:
                errors[reason] = errors.get(reason, 0) + 1
        return False
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        delivered = sum(pool.map(fetch, job["grids"]))
    return {"attempted": len(job["grids"]), "delivered": delivered, "errors": errors}


def run_ee_client(url: str, job: dict, threads: int) -> dict:
    """C threads of ee.data.computePixels with the ee.Image (re-serialized per call)."""
    import ee
    ee_throughput.init_ee(url, client_retries=False)
    image = ee.deserializer.decode(job["expression"])  # the same graph, as an ee.Image
    errors, lock = {}, threading.Lock()

    def fetch(grid) -> bool:
        for _ in range(50):
            try:
                payload = ee.data.computePixels({"expression": image, "fileFormat": "NPY", "grid": grid,
                                                 "bandIds": job["band_ids"]})
                return check(payload, grid, job["band_ids"])
            except Exception as e:  # noqa: BLE001 - counted and retried
                with lock:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        return False
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        delivered = sum(pool.map(fetch, job["grids"]))
    return {"attempted": len(job["grids"]), "delivered": delivered, "errors": errors}


def check(payload: bytes, grid: dict, band_ids: list[str]) -> bool:
    arr = np.load(io.BytesIO(payload), allow_pickle=False)
    dims = grid["dimensions"]
    return arr.shape == (dims["height"], dims["width"]) and list(arr.dtype.names) == band_ids


# -- the run ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Row:
    client: str
    patches: int
    seconds: float
    rate: float
    cpu_s: float
    cpu_per_1000: float
    wall_s: float
    over_quota_429: int
    peak: int
    lost: int
    note: str = ""


def measure(name: str, url: str, cmd: list, count) -> Row:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc, wall, sampler, stats = ee_throughput.sampled_run(url, cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    delivered, attempted, note = count(proc)
    skip = max(0, stats["answered_200"] - delivered)  # pixelbeam's 1x1 px probe
    seconds, _ = sampler.window(skip, stats["answered_200"])
    rejected = stats["rejected_429"]
    return Row(name, delivered, seconds, delivered / seconds, cpu, 1000 * cpu / max(delivered, 1), wall,
               rejected["concurrency"] + rejected["rate"], stats["peak_in_flight"], attempted - delivered, note)


def prepare(tmp: str, url: str, args) -> tuple[str, dict, list[str]]:
    """The expression JSON, the pixelbeam config, and the ideal client's job (the request
    expression pixelbeam sends, the band ids, every patch's grid)."""
    import yaml
    from pixelbeam.pipeline.config import load_config
    from pixelbeam.pipeline.plan import prepare_job
    from pixelbeam.transforms.sources.earthengine import VALID_BAND
    ee_throughput.init_ee(url, client_retries=False)
    expression_file = os.path.join(tmp, "expression.json")
    with open(expression_file, "w") as f:
        f.write(big_expression(args.ids).serialize())
    config = ee_throughput.write_job(tmp, url, args.patches, args.concurrency, args.latency, "pixelbeam")
    doc = yaml.safe_load(open(config))
    doc["source"] = {"kind": "earthengine", "expression_json": expression_file, "bands": BANDS, "url": url,
                     "credentials": "anonymous", "project": "bench"}
    with open(config, "w") as f:
        yaml.safe_dump(doc, f)
    job = prepare_job(load_config(config))
    reader = job.source.open(job.info)
    ideal = {"expression": reader.expression, "band_ids": BANDS + [VALID_BAND],
             "grids": [s.pixel_grid() for s in job.specs]}
    return config, ideal, [s.patch_id for s in job.specs]


def run(args) -> list[Row]:
    tmp = tempfile.mkdtemp(prefix="pixelbeam-ee-expression-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        catalog = os.path.join(tmp, "catalog.json")
        args.ids = write_catalog(catalog)
        proc, url = ee_throughput.start_emulator(catalog, args.latency, args.concurrency, 0.0, 0.0)
        try:
            config, ideal, planned = prepare(tmp, url, args)
            job_file = os.path.join(tmp, "job.json")
            with open(job_file, "w") as f:
                json.dump(ideal, f)
            args.expression_bytes = len(json.dumps(ideal["expression"]))
            me = [sys.executable, os.path.abspath(__file__), "--url", url, "--job", job_file,
                  "--threads", str(args.concurrency)]
            out = os.path.join(tmp, "pixelbeam")
            rows = []
            for kind in ("ideal", "pixelbeam", "ee-client", "ideal"):  # the ideal client first and last
                print(f"  running {kind} ...", file=sys.stderr, flush=True)
                if kind == "pixelbeam":
                    shutil.rmtree(out, ignore_errors=True)
                    count = ee_throughput.pixelbeam_result(out, planned)
                    rows.append(measure("pixelbeam", url, [sys.executable, "-m", "pixelbeam", "run", config],
                                        lambda p: _shape_checked(count(p), out, planned)))
                else:
                    rows.append(measure(f"{kind} ({args.concurrency} threads)", url, me + ["--client", kind],
                                        ee_throughput.client_result))
            first, last = rows[0], rows.pop()
            rows[0] = first if first.rate >= last.rate else last  # the faster ideal run is the reference
            rows[0].note = f"ideal runs {first.rate:.2f} and {last.rate:.2f} patches/s (first and last); the faster is shown"
            return rows
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _shape_checked(counted, out: str, planned: list[str]):
    """Written patches: ee_throughput's manifest note, and NPY files of (5, 16, 16) counted here."""
    written = sum(os.path.exists(os.path.join(out, "npy", f"{pid}.npy"))
                  and np.load(os.path.join(out, "npy", f"{pid}.npy")).shape == (len(BANDS), 16, 16) for pid in planned)
    return written, len(planned), counted[2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=2.0, help="emulator latency per request, s (L)")
    p.add_argument("--concurrency", type=int, default=16, help="emulator in-flight quota (C)")
    p.add_argument("--patches", type=int, default=320, help="patches per client")
    p.add_argument("--quick", action="store_true", help="smoke run: L 1 s, C 8, 96 patches")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchmarks/run_all.py)")
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        with open(args.job) as f:
            job = json.load(f)
        client = run_ideal if args.client == "ideal" else run_ee_client
        print(json.dumps(client(args.url, job, args.threads)))
        return 0
    if args.quick:
        args.latency, args.concurrency, args.patches = 1.0, 8, 96
    rows = run(args)
    ideal = rows[0]
    print(f"L {args.latency:g} s | C {args.concurrency} | N {args.patches} patches of 16x16 px x {len(BANDS)} bands "
          f"(+ validity band), 1 computePixels each | expression: {IMAGES} images mapped and reduced, "
          f"{args.expression_bytes:,} bytes of JSON | quota C/L = {args.concurrency / args.latency:g} patches/s | "
          f"{os.cpu_count()} cores")
    head = ["client", "patches", "seconds", "patches/s", "/ ideal", "CPU s", "CPU s / 1,000 patches", "429 over C",
            "peak in flight", "lost", "wall s"]
    body = [[r.client, str(r.patches), f"{r.seconds:.1f}", f"{r.rate:.2f}", f"{r.rate / ideal.rate:.3f}",
             f"{r.cpu_s:.1f}", f"{r.cpu_per_1000:.1f}", str(r.over_quota_429), str(r.peak), str(r.lost),
             f"{r.wall_s:.1f}"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    for line in [head, ["-" * w for w in widths]] + body:
        print(" | ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths))))
    for r in rows:
        if r.note:
            print(f"  {r.client}: {r.note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "ee_expression", "latency_s": args.latency, "concurrency": args.concurrency,
                       "patches": args.patches, "images": IMAGES, "expression_bytes": args.expression_bytes,
                       "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
