"""Point tables (`table:`): pixelbeam against the loop a user would write, side by side in one run.

Raster files: N dated copies of a 120x100 px window of data/RGB.byte.tif (3 uint8 bands, nodata
0; image i is the data + i, its first 2*(i % 5) rows nodata, as tests/test_point_table.py)
and P random pixel centres as points:
  pixelbeam  `pixelbeam.pipeline.cli.main(["run", CONFIG])` in this process (local runner, Parquet only).
  baseline   points to the files' CRS once (pyproj), then per file a rasterio read of the
             points' bounding window and numpy fancy-indexing of their pixels; the same rows
             (null where any band is nodata) built into one pyarrow table and written as one
             Parquet file (zstd, as pixelbeam).
  Both are timed after a small warm-up job (imports and Beam's first run excluded), median of
  --repeat runs, and both tables are read back and compared row for row (every value and null).
  pixelbeam's time on a 2 files x 10 points job is shown too: its fixed cost (planning, Beam's
  graph and stages), which a run pays whatever its size.

Earth Engine: the emulator (`python -m pixelbeam.testing.ee_emulator`, its own process) serves T dated
copies of a 60x50 px window as a collection, with latency L s per request and a quota of C
requests in flight (more get an immediate 429); P points, table.group_size G:
  pixelbeam  `python -m pixelbeam run CONFIG` with fetch.max_concurrent_requests C: one
             computePixels per group of every image's bands stacked (split at 1,024 bands).
  per-image  a pool of C threads with the real `ee` client (pixelbeam.transforms.sources.earthengine.
             initialize_earth_engine): one computePixels per (group, image) of that image's bands
             and validity band (the image pixelbeam stacks), a 429 or 5xx retried after 0.1 s;
             the same rows into one Parquet file.
Each runs in its own process; `wall s` is that process's wall time (interpreter, ee start-up,
and for pixelbeam Beam's start-up and its collection listing and band probe included), `fetch s`
the span the emulator saw from the first group request to its last answer (/_emulator/stats
polled every 50 ms). `requests` is what the emulator received (reset before each client), 429s
included; pixelbeam's include its listing and probe (2). The emulator computes every request in
one Python process, where a stack of T images costs about as much CPU as T single-image
requests: pixelbeam's `fetch s` is mostly that compute (try --latency 0.01), not the quota's
waves of L, so `requests` is the figure a real server's quota would see.

    .venv/bin/python benchmarks/table_throughput.py            # 100 files x 7,000 points; EE 30 x 300 (~1 min)
    .venv/bin/python benchmarks/table_throughput.py --quick    # smoke run, tiny sizes
    .venv/bin/python benchmarks/table_throughput.py --files 100 --points 7000 --ee-images 30 --ee-points 300 \\
        --latency 0.25 --concurrency 8 --json results.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import yaml
from pyproj import Transformer
from rasterio.windows import Window

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ee_throughput import sampled_run, start_emulator  # noqa: E402

SCENE = os.path.join(ROOT, "data", "RGB.byte.tif")
BANDS = ["B1", "B2", "B3"]
COLLECTION = "BENCH/SERIES"
TIMEOUT_S = 30.0
KEYS = ["id", "point_id", "time", "longitude", "latitude"] + BANDS


# -- the data: dated files and points (as tests/test_point_table.py) -----------------------------

def write_collection(folder: str, n: int, window: Window) -> list[str]:
    """n dated copies of a scene window: image i is the data + i (clipped), its first 2*(i % 5)
    rows nodata (0)."""
    os.makedirs(folder, exist_ok=True)
    with rasterio.open(SCENE) as ds:
        profile, data, transform = ds.profile, ds.read(window=window), ds.window_transform(window)
    profile.update(width=int(window.width), height=int(window.height), transform=transform)
    files = []
    for i in range(n):
        img = np.where(data != 0, np.clip(data.astype(int) + i, 1, 255), 0).astype(np.uint8)
        img[:, : 2 * (i % 5)] = 0
        path = os.path.join(folder, f"img{i:03d}.tif")
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(img)
        files.append(path)
    return files


def image_times(n: int) -> list[str]:
    return [(dt.date(2020, 1, 1) + dt.timedelta(days=3 * i)).isoformat() for i in range(n)]


def write_points(path: str, file: str, count: int, seed: int) -> None:
    """`count` distinct random pixel centres of `file` as GeoJSON points named p0, p1, ..."""
    with rasterio.open(file) as ds:
        width, height, transform, crs = ds.width, ds.height, ds.transform, ds.crs
    if count > width * height:
        raise SystemExit(f"at most {width * height} points fit a {width}x{height} px file")
    flat = np.random.default_rng(seed).choice(width * height, size=count, replace=False)
    x, y = transform * (flat % width + 0.5, flat // width + 0.5)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
    feats = [{"type": "Feature", "properties": {"name": f"p{k}"},
              "geometry": {"type": "Point", "coordinates": [float(a), float(b)]}}
             for k, (a, b) in enumerate(zip(lon, lat))]
    with open(path, "w") as f:
        json.dump({"type": "FeatureCollection", "features": feats}, f)


def write_yaml(path: str, doc: dict) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def raster_config(tmp: str, files: list[str], points: str, group_size: int, name: str) -> str:
    doc = {"source": {"uri": files}, "regions": points, "output": {"path": os.path.join(tmp, name)},
           "table": {"times": image_times(len(files)), "point_id_property": "name", "group_size": group_size}}
    return write_yaml(os.path.join(tmp, f"{name}.yaml"), doc)


# -- comparing two tables ------------------------------------------------------------------------

def compare(ours: pa.Table, theirs: pa.Table) -> str:
    """'equal' when both hold the same rows (values and nulls; lon/lat within 1e-9 degrees),
    else what differs."""
    if ours.num_rows != theirs.num_rows:
        return f"rows differ ({ours.num_rows} vs {theirs.num_rows})"
    order = [("point_id", "ascending"), ("id", "ascending")]
    a, b = ours.select(KEYS).sort_by(order), theirs.select(KEYS).sort_by(order)
    bad = []
    for key in KEYS:
        x, y = a.column(key).combine_chunks(), b.column(key).combine_chunks()
        if key in ("longitude", "latitude"):
            if np.abs(x.to_numpy() - y.to_numpy()).max() > 1e-9:
                bad.append(key)
        elif not x.cast(y.type).equals(y):
            bad.append(key)
    return "equal" if not bad else "columns differ: " + ", ".join(bad)


# -- raster files: pixelbeam and the plain loop --------------------------------------------------

def baseline_raster_table(files: list[str], times: list[str], points: str, out_file: str) -> int:
    """The loop a user would write: per file a window read and fancy-indexing at the points."""
    with open(points) as f:
        feats = json.load(f)["features"]
    names = np.array([ft["properties"]["name"] for ft in feats], dtype=object)
    lon, lat = np.array([ft["geometry"]["coordinates"] for ft in feats], dtype=float).T
    with rasterio.open(files[0]) as ds:
        crs, transform, nodata = ds.crs, ds.transform, ds.nodata
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    col, row = ~transform * (x, y)
    col, row = np.floor(col).astype(int), np.floor(row).astype(int)
    plon, plat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(*(transform * (col + 0.5, row + 0.5)))
    r0, c0 = row.min(), col.min()
    window = Window(c0, r0, col.max() - c0 + 1, row.max() - r0 + 1)
    n, p = len(files), len(names)
    values = np.empty((n, len(BANDS), p), dtype=np.uint8)
    for i, path in enumerate(files):
        with rasterio.open(path) as ds:
            values[i] = ds.read(window=window)[:, row - r0, col - c0]
    valid = (values != nodata).all(axis=1).reshape(-1)  # (n * p,), file-major
    ms = [int(dt.datetime.fromisoformat(t).replace(tzinfo=dt.timezone.utc).timestamp() * 1000) for t in times]
    ids = [os.path.splitext(os.path.basename(f))[0] for f in files]
    arrays = [pa.array(np.repeat(np.array(ids, dtype=object), p), pa.string()),
              pa.array(np.tile(plon, n), pa.float64()), pa.array(np.tile(plat, n), pa.float64()),
              pa.array(np.repeat(ms, p), pa.int64()), pa.array(np.tile(names, n), pa.string())]
    arrays += [pa.array(values[:, b].reshape(-1), pa.uint8(), mask=~valid) for b in range(len(BANDS))]
    table = pa.Table.from_arrays(arrays, names=["id", "longitude", "latitude", "time", "point_id"] + BANDS)
    pq.write_table(table, out_file, compression="zstd")
    return table.num_rows


def pixelbeam_run(config: str) -> None:
    """`pixelbeam run CONFIG` in this process, its output kept off the terminal."""
    from pixelbeam.pipeline.cli import main
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = main(["run", config])
    if code != 0:
        raise RuntimeError(f"pixelbeam run exited {code}:\n{sink.getvalue()[-3000:]}")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_raster(tmp: str, n_files: int, n_points: int, group_size: int, repeat: int) -> dict:
    folder = os.path.join(tmp, "raster")
    files = write_collection(folder, n_files, Window(200, 200, 120, 100))
    times = image_times(n_files)
    points = os.path.join(folder, "points.geojson")
    write_points(points, files[0], n_points, seed=0)
    config = raster_config(folder, files, points, group_size, "pixelbeam")
    pb_out, base_file = os.path.join(folder, "pixelbeam"), os.path.join(folder, "baseline.parquet")
    tiny_points = os.path.join(folder, "tiny.geojson")  # 2 files x 10 points: imports and Beam's first run
    write_points(tiny_points, files[0], 10, seed=1)
    tiny_config = raster_config(folder, files[:2], tiny_points, group_size, "tiny")
    tiny_out = os.path.join(folder, "tiny")
    pixelbeam_run(tiny_config)  # warm-up, untimed
    baseline_raster_table(files[:2], times[:2], tiny_points, os.path.join(folder, "tiny.parquet"))
    runs = {"pixelbeam": [], "baseline": [], "pixelbeam_tiny": []}
    for _ in range(repeat):
        shutil.rmtree(pb_out, ignore_errors=True)
        shutil.rmtree(tiny_out, ignore_errors=True)
        runs["baseline"].append(timed(lambda: baseline_raster_table(files, times, points, base_file)))
        runs["pixelbeam"].append(timed(lambda: pixelbeam_run(config)))
        runs["pixelbeam_tiny"].append(timed(lambda: pixelbeam_run(tiny_config)))
    ours, theirs = pq.read_table(os.path.join(pb_out, "table")), pq.read_table(base_file)
    pb, base = statistics.median(runs["pixelbeam"]), statistics.median(runs["baseline"])
    return {"files": n_files, "points": n_points, "bands": len(BANDS), "group_size": group_size, "repeat": repeat,
            "pixelbeam_s": pb, "baseline_s": base, "ratio": pb / base, "pixelbeam_rows": ours.num_rows,
            "pixelbeam_tiny_s": statistics.median(runs["pixelbeam_tiny"]),
            "baseline_rows": theirs.num_rows, "values": n_files * n_points * len(BANDS),
            "check": compare(ours, theirs), "runs": runs}


# -- Earth Engine: the per-image client (runs in its own process: `--client JOB`) ----------------

def per_image_client(job_file: str) -> dict:
    """One computePixels per (group, image) from a pool of `threads`; rows into one Parquet file."""
    import ee
    from pixelbeam.transforms.sources.earthengine import VALID_BAND, decode_npy, initialize_earth_engine, valid_band
    with open(job_file) as f:
        job = json.load(f)
    initialize_earth_engine(job["url"], "bench", "anonymous", TIMEOUT_S)
    bands = job["bands"]
    images = {}
    for image_id, _ in job["images"]:
        img = ee.Image(f"{job['collection']}/{image_id}").select(bands)
        images[image_id] = img.addBands(valid_band(ee, img, bands))
    attempts, lock = [0], threading.Lock()

    def fetch(group: dict, image_id: str) -> np.ndarray:
        for attempt in range(20):
            with lock:
                attempts[0] += 1
            try:
                return decode_npy(ee.data.computePixels({"expression": images[image_id], "fileFormat": "NPY",
                                                         "bandIds": bands + [VALID_BAND], "grid": group["grid"]}))
            except Exception:  # noqa: BLE001 - a 429/5xx from the quota: wait a little and send again
                if attempt == 19:
                    raise
                time.sleep(0.1)

    tasks = [(g, image_id, t) for g in job["groups"] for image_id, t in job["images"]]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(job["threads"]) as pool:
        answers = list(pool.map(lambda task: fetch(task[0], task[1]), tasks))
    columns = {k: [] for k in ("id", "longitude", "latitude", "time", "point_id", "valid", *bands)}
    for (group, image_id, t), fields in zip(tasks, answers):
        pixels = group["pixels"]  # [point_id, row, col, lon, lat] (row, col within the group window)
        r = np.array([p[1] for p in pixels])
        c = np.array([p[2] for p in pixels])
        columns["id"] += [image_id] * len(pixels)
        columns["time"] += [t] * len(pixels)
        columns["point_id"] += [p[0] for p in pixels]
        columns["longitude"] += [p[3] for p in pixels]
        columns["latitude"] += [p[4] for p in pixels]
        columns["valid"].append(fields[VALID_BAND][r, c] > 0)
        for b in bands:
            columns[b].append(fields[b][r, c])
    valid = np.concatenate(columns.pop("valid"))
    arrays = {k: pa.array(v, pa.float64() if k in ("longitude", "latitude") else None) for k, v in columns.items()
              if k not in bands}
    for b in bands:
        arrays[b] = pa.array(np.concatenate(columns[b]), mask=~valid)
    table = pa.table(arrays)
    pq.write_table(table, job["out"], compression="zstd")
    return {"rows": table.num_rows, "attempts": attempts[0], "client_s": time.monotonic() - started}


# -- Earth Engine: both clients against one emulator ---------------------------------------------

def ee_config(tmp: str, url: str, file: str, points: str, group_size: int, concurrency: int, latency: float) -> str:
    with rasterio.open(file) as ds:
        t, crs = ds.transform, ds.crs.to_string()
    doc = {"source": {"kind": "earthengine", "collection": COLLECTION, "url": url, "credentials": "anonymous",
                      "project": "bench"},
           "regions": points, "output": {"path": os.path.join(tmp, "pixelbeam")},
           "table": {"crs": crs, "scale": [t.a, -t.e], "origin": [t.c, t.f], "point_id_property": "name",
                     "group_size": group_size},
           "fetch": {"max_concurrent_requests": concurrency, "max_requests_per_second": 10 * concurrency / latency,
                     "timeout_s": TIMEOUT_S}}
    return write_yaml(os.path.join(tmp, "pixelbeam.yaml"), doc)


def write_client_job(path: str, config: str, url: str, threads: int, out: str) -> dict:
    """pixelbeam's own plan of the table (its listing and probe reach the emulator), as the
    per-image client's job: images, and per group its PixelGrid and pixels."""
    from pixelbeam.pipeline.config import load_config
    from pixelbeam.pipeline.tables.plan import prepare_table_job
    job = prepare_table_job(load_config(config))
    groups = [{"grid": spec.pixel_grid(),
               "pixels": [[p.point_id, p.row - spec.row, p.col - spec.col, p.lon, p.lat] for p in pixels]}
              for spec, pixels in job.groups]
    doc = {"url": url, "collection": COLLECTION, "bands": list(job.bands), "threads": threads, "out": out,
           "images": [[i.image_id, i.time_ms] for i in job.images], "groups": groups}
    with open(path, "w") as f:
        json.dump(doc, f)
    return {"groups": len(groups), "images": len(job.images), "planned_rows": job.rows,
            "stacked_requests": job.summary()["requests"]}


def run_measured(url: str, cmd: list[str], launch_requests: int) -> dict:
    """Reset the emulator's stats, run `cmd` in its own process; wall time and what the emulator saw."""
    proc, wall, sampler, stats = sampled_run(url, cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    fetch_s, _ = sampler.window(launch_requests, stats["answered_200"])
    return {"wall_s": wall, "fetch_s": fetch_s, "requests": stats["requests_received"],
            "answered_200": stats["answered_200"], "rejected_429": sum(stats["rejected_429"].values()),
            "peak_in_flight": stats["peak_in_flight"], "stdout": proc.stdout}


def measure_ee(tmp: str, n_images: int, n_points: int, group_size: int, latency: float, concurrency: int) -> dict:
    folder = os.path.join(tmp, "ee")
    files = write_collection(folder, n_images, Window(300, 300, 60, 50))
    times = image_times(n_images)
    points = os.path.join(folder, "points.geojson")
    write_points(points, files[0], n_points, seed=2)
    catalog = os.path.join(folder, "catalog.json")
    with open(catalog, "w") as f:
        json.dump({"collections": {COLLECTION: [
            {"id": f"{COLLECTION}/{os.path.basename(p)[:-4]}", "path": p, "bands": BANDS, "time_start": t}
            for p, t in zip(files, times)]}}, f)
    proc, url = start_emulator(catalog, latency, concurrency, 0.0, 0.0)
    try:
        config = ee_config(folder, url, files[0], points, group_size, concurrency, latency)
        job_file, client_out = os.path.join(folder, "client.json"), os.path.join(folder, "per_image.parquet")
        plan = write_client_job(job_file, config, url, concurrency, client_out)
        print("  running per-image client ...", file=sys.stderr, flush=True)
        per_image = run_measured(url, [sys.executable, os.path.abspath(__file__), "--client", job_file], 0)
        client = json.loads(per_image.pop("stdout").strip().splitlines()[-1])
        print("  running pixelbeam ...", file=sys.stderr, flush=True)
        pixelbeam = run_measured(url, [sys.executable, "-m", "pixelbeam", "run", config], 2)
        pixelbeam.pop("stdout")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    ours, theirs = pq.read_table(os.path.join(folder, "pixelbeam", "table")), pq.read_table(client_out)
    return {"images": n_images, "points": n_points, "bands": len(BANDS), "group_size": group_size,
            "latency_s": latency, "concurrency": concurrency, **plan, "pixelbeam": pixelbeam,
            "per_image": {**per_image, "client_s": client["client_s"]}, "pixelbeam_rows": ours.num_rows,
            "per_image_rows": theirs.num_rows, "check": compare(ours, theirs),
            "wall_ratio": pixelbeam["wall_s"] / per_image["wall_s"],
            "fetch_ratio": pixelbeam["fetch_s"] / per_image["fetch_s"],
            "requests_ratio": pixelbeam["requests"] / per_image["requests"]}


# -- output --------------------------------------------------------------------------------------

def print_table(raster: dict, ee: dict) -> None:
    head = ["part", "client", "requests", "429s", "rows", "wall s", "fetch s", "ratio (pixelbeam / ref)", "same rows"]
    body = []
    if raster:
        what = f"raster {raster['files']} files x {raster['points']} pts x {raster['bands']} bands"
        body += [[what, "pixelbeam", "", "", f"{raster['pixelbeam_rows']:,}", f"{raster['pixelbeam_s']:.2f}", "",
                  f"time {raster['ratio']:.2f}", raster["check"]],
                 [what, "rasterio + numpy + Parquet loop", "", "", f"{raster['baseline_rows']:,}",
                  f"{raster['baseline_s']:.2f}", "", "(ref)", ""],
                 ["raster 2 files x 10 pts (fixed cost)", "pixelbeam", "", "", "20",
                  f"{raster['pixelbeam_tiny_s']:.2f}", "", "", ""]]
    if ee:
        what = (f"EE {ee['images']} images x {ee['points']} pts, {ee['groups']} groups, "
                f"L {ee['latency_s']:g} s, C {ee['concurrency']}")
        pb, ref = ee["pixelbeam"], ee["per_image"]
        body += [[what, "pixelbeam (stacked)", str(pb["requests"]), str(pb["rejected_429"]),
                  f"{ee['pixelbeam_rows']:,}", f"{pb['wall_s']:.1f}", f"{pb['fetch_s']:.2f}",
                  f"wall {ee['wall_ratio']:.3f}, fetch {ee['fetch_ratio']:.3f}, requests {ee['requests_ratio']:.3f}",
                  ee["check"]],
                 [what, f"per image ({ee['concurrency']} threads)", str(ref["requests"]), str(ref["rejected_429"]),
                  f"{ee['per_image_rows']:,}", f"{ref['wall_s']:.1f}", f"{ref['fetch_s']:.2f}", "(ref)", ""]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    for line in [head, ["-" * w for w in widths]] + body:
        print(" | ".join(x.ljust(w) if i in (0, 1, 7, 8) else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100, help="raster: dated files (images)")
    p.add_argument("--points", type=int, default=7000, help="raster: points (at most 12,000)")
    p.add_argument("--group-size", type=int, default=64, help="raster: table.group_size, px (pixelbeam's default)")
    p.add_argument("--repeat", type=int, default=3, help="raster: runs of each (median)")
    p.add_argument("--ee-images", type=int, default=30, help="Earth Engine: images in the collection")
    p.add_argument("--ee-points", type=int, default=300, help="Earth Engine: points (at most 3,000)")
    p.add_argument("--ee-group-size", type=int, default=16, help="Earth Engine: table.group_size, px")
    p.add_argument("--latency", type=float, default=0.25, help="emulator latency per request, s (L)")
    p.add_argument("--concurrency", type=int, default=8, help="emulator in-flight quota and both clients' threads (C)")
    p.add_argument("--skip", choices=["raster", "ee"], help="leave one part out")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 files x 300 points, EE 6 images x 60 points")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchmarks/run_all.py)")
    p.add_argument("--client", help=argparse.SUPPRESS)  # internal: run the per-image client on this job file
    args = p.parse_args(argv)
    if args.client:
        print(json.dumps(per_image_client(args.client)))
        return 0
    if args.quick:
        args.files, args.points, args.repeat = 8, 300, 1
        args.ee_images, args.ee_points, args.latency, args.concurrency = 6, 60, 0.1, 4
    tmp = tempfile.mkdtemp(prefix="pixelbeam-table-bench-")
    raster = ee = {}
    try:
        if args.skip != "raster":
            print(f"  raster: {args.files} files x {args.points} points ...", file=sys.stderr, flush=True)
            raster = measure_raster(tmp, args.files, args.points, args.group_size, args.repeat)
        if args.skip != "ee":
            print(f"  Earth Engine: {args.ee_images} images x {args.ee_points} points ...", file=sys.stderr, flush=True)
            ee = measure_ee(tmp, args.ee_images, args.ee_points, args.ee_group_size, args.latency, args.concurrency)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"point tables | {len(BANDS)} uint8 bands | raster group_size {args.group_size}, median of "
          f"{args.repeat} | EE group_size {args.ee_group_size}, emulator L {args.latency:g} s, C {args.concurrency}, "
          f"no rate quota | {os.cpu_count()} cores")
    print_table(raster, ee)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "table_throughput", "raster": raster, "ee": ee}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
