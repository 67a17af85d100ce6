"""How close pixelbeam's Earth Engine fetch gets to the quota, side by side in one run.

A local Earth Engine REST emulator runs in its own process serving data/RGB.byte.tif as an
asset, with per-request latency L (s) and a concurrency quota C (requests in flight; more get an
immediate 429). The emulator's rate quota is off (--max-rps 0) unless --max-rps is given, so
the ceiling is C/L patches/s. Every client fetches the same N one-request patches (16x16 px
PixelGrids planned by pixelbeam over the scene) with `getPixels` (NPY), each in its own process:

  ideal        C threads pull from a queue (told the quota), a failed patch is requeued at once,
               and each request is as lean as it can be written: urllib3 with a pool of C
               connections, the body concatenated from pre-encoded bytes, the NPY read with
               np.frombuffer. The machine's own ceiling, in patches/s and in CPU.
  ee pool      the same queue and threads through the bare `ee` client (ee.data.getPixels, its
               retries off, np.load): what the `ee` client costs.
  pixelbeam    `python -m pixelbeam run CONFIG` (the real job, local runner, NPY only) with
               fetch.max_concurrent_requests C, max_requests_per_second 10*C/L and
               patches_per_request 1 (a request per patch, as the other clients). Its pixel
               requests go through transforms/sources/ee_rest.py (the REST methods over
               google-auth + urllib3), not through the `ee` client.
  sequential   a plain loop of ee.data.getPixels, for --sequential-s seconds (a subset).
  notebook-64  ThreadPoolExecutor(max_workers=64) over all patches, ee's own retries at their
               default (as in Earth Engine's example notebooks).
`--before REV` also runs pixelbeam with the code of git revision REV (a `git archive` of it), right
after the current code, as the row `pixelbeam (REV)`.
Then ideal, ee pool and pixelbeam again against an emulator injecting --faults transient faults
(429 40 %, 500 20 %, 503 20 %, connection reset 10 %, truncated body 10 % of the faults).
`--clients` picks the clients (ideal first: the ratios are to it).

`seconds` is measured on the emulator (its /_emulator/stats polled every 50 ms): from the first
pixel request of the client's bulk fetch to its last successful answer, so interpreter, Beam
start-up and pixelbeam's 1x1 px describe probe are excluded; `wall s` is the client process's
wall time including all of that, and `wall patches/s` / `wall / ideal` the whole process's rate
(against the ideal client's rate over its fetch span). `CPU s` is the client process's user +
system CPU seconds, start to exit (getrusage of the waited-for child); `CPU s/1000` per 1,000
delivered patches, and `span CPU s/1000` only the CPU spent during the fetch span (the
process's /proc/<pid>/stat, sampled with the stats). `lost` counts patches that did not
arrive: for pixelbeam, planned patches without a `written` manifest row whose NPY file has the
right shape.

    .venv/bin/python benchmarks/ee_throughput.py                       # L 1 s, C 40, 800 patches
    .venv/bin/python benchmarks/ee_throughput.py --quick               # smoke run, ~1 min
    .venv/bin/python benchmarks/ee_throughput.py --latency 1 --concurrency 40 --patches 1000 --faults 0.05
    .venv/bin/python benchmarks/ee_throughput.py --latency 0.5 --concurrency 20 --patches 1000 --faults 0 \
        --clients ideal,eepool,pixelbeam [--before REV]                 # the CPU comparison (~2 min)
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from _revisions import checkout  # noqa: E402  (benchmarks/, the script's own folder)

SCENE = os.path.join(ROOT, "data", "RGB.byte.tif")
ASSET = "projects/bench/assets/landsat"
BANDS = ["B1", "B2", "B3"]
PATCH_PX = 16
FAULT_SPLIT = {"429": 0.4, "500": 0.2, "503": 0.2, "reset": 0.1, "truncate": 0.1}
POLL_S = 0.05
CLIENTS = ("ideal", "eepool", "pixelbeam", "sequential", "notebook")
TIMEOUT_S = 30.0


# -- clients (each runs in its own process: `--client KIND`) -------------------------------------

def init_ee(url: str, client_retries: bool) -> None:
    """Initialize `ee` as pixelbeam does (anonymous, offline, retries off, deadline TIMEOUT_S);
    `client_retries` puts the ee client's own retries back to their default."""
    import ee
    from pixelbeam.transforms.sources.earthengine import initialize_earth_engine
    initialize_earth_engine(url, "bench", "anonymous", TIMEOUT_S)
    if client_retries:
        ee.data.setMaxRetries(ee._state.EEState().max_retries)


def fetch_ok(grid: dict) -> bool:
    """One getPixels request; True if a whole (H, W) NPY array with every band came back."""
    import ee
    payload = ee.data.getPixels({"assetId": ASSET, "fileFormat": "NPY", "grid": grid, "bandIds": BANDS})
    return npy_ok(np.load(io.BytesIO(payload), allow_pickle=False), grid)


def npy_ok(arr: np.ndarray, grid: dict) -> bool:
    dims = grid["dimensions"]
    return arr.shape == (dims["height"], dims["width"]) and list(arr.dtype.names) == BANDS


class LeanClient:
    """The machine's ceiling: urllib3 with a pool of `threads` connections posting the
    getPixels body (built from pre-encoded bytes) and reading the NPY with np.frombuffer; no
    retries of its own, no auth (the emulator is anonymous)."""

    def __init__(self, url: str, threads: int):
        import urllib3
        self.http = urllib3.PoolManager(maxsize=threads, retries=False, timeout=TIMEOUT_S)
        self.url = f"{url}/v1/{ASSET}:getPixels"
        self.prefix = json.dumps({"fileFormat": "NPY", "bandIds": BANDS})[:-1].encode() + b', "grid": '

    def fetch_ok(self, grid: dict) -> bool:
        r = self.http.request("POST", self.url, body=self.prefix + json.dumps(grid).encode() + b"}",
                              headers={"Content-Type": "application/json"})
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
        buf = io.BytesIO(r.data)
        read = {(1, 0): np.lib.format.read_array_header_1_0}.get(np.lib.format.read_magic(buf),
                                                                 np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(buf, max_header_size=1 << 20)
        arr = np.frombuffer(r.data, dtype=dtype, offset=buf.tell()).reshape(shape)
        return npy_ok(arr, grid)


_FETCH = fetch_ok  # the client's fetch: ee.data.getPixels, or LeanClient.fetch_ok for `ideal`


def try_fetch(grid: dict, errors: collections.Counter, lock: threading.Lock) -> bool:
    try:
        return _FETCH(grid)
    except Exception as e:  # noqa: BLE001 - counted, the patch is lost (or requeued by ideal)
        with lock:
            errors[type(e).__name__] += 1
        return False


def run_ideal(grids: list, threads: int, errors, lock, max_attempts: int = 50) -> int:
    """A pool of `threads` workers kept full; a failed patch is resubmitted at once. The main
    thread owns the bookkeeping, so no failure (whatever it raises) can lose a patch silently."""
    delivered = 0
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        pending = {pool.submit(try_fetch, grids[i], errors, lock): (i, 1) for i in range(len(grids))}
        while pending:
            done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                i, attempt = pending.pop(future)
                try:
                    ok = future.result()
                except BaseException as e:  # noqa: BLE001 - counted like any failed request
                    with lock:
                        errors[type(e).__name__] += 1
                    ok = False
                if ok:
                    delivered += 1
                elif attempt < max_attempts:
                    pending[pool.submit(try_fetch, grids[i], errors, lock)] = (i, attempt + 1)
    return delivered


def run_client(kind: str, url: str, grids: list, threads: int, seconds: float) -> dict:
    """Run one baseline client; returns delivered/attempted patch counts and errors by type."""
    global _FETCH
    if kind == "ideal":
        _FETCH = LeanClient(url, threads).fetch_ok
    else:
        init_ee(url, client_retries=(kind == "notebook"))
    errors, lock = collections.Counter(), threading.Lock()
    started = time.monotonic()
    if kind in ("ideal", "eepool"):
        attempted, delivered = len(grids), run_ideal(grids, threads, errors, lock)
    elif kind == "notebook":
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(lambda g: try_fetch(g, errors, lock), grids))
        attempted, delivered = len(grids), sum(results)
    elif kind == "sequential":
        attempted = delivered = 0
        while attempted < len(grids) and time.monotonic() - started < seconds:
            delivered += try_fetch(grids[attempted], errors, lock)
            attempted += 1
    else:
        raise ValueError(kind)
    return {"attempted": attempted, "delivered": delivered, "errors": dict(errors),
            "client_s": time.monotonic() - started}


# -- the emulator and its stats ------------------------------------------------------------------

def start_emulator(catalog: str, latency: float, concurrency: int, max_rps: float, faults: float):
    """Start `python -m pixelbeam.testing.ee_emulator` in its own process; returns (process, url)."""
    cmd = [sys.executable, "-m", "pixelbeam.testing.ee_emulator", "--port", "0", "--catalog", catalog,
           "--latency-s", str(latency), "--max-concurrent", str(concurrency), "--max-rps", str(max_rps)]
    for kind, share in FAULT_SPLIT.items():
        if faults:
            cmd += [f"--fault-{kind}", str(faults * share)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("EMULATOR_URL="):
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    return proc, line.split("=", 1)[1]


def emulator_call(url: str, path: str, post: bool = False) -> dict:
    req = urllib.request.Request(url + path, data=b"{}" if post else None, method="POST" if post else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (and its waited-for children), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class StatsSampler(threading.Thread):
    """Polls the emulator's stats every POLL_S s: (monotonic s, received, answered 200, in flight,
    the client process's CPU seconds so far)."""

    def __init__(self, url: str, pid: int):
        super().__init__(daemon=True)
        self.url, self.pid, self.samples, self.stopped = url, pid, [], threading.Event()
        self.cpu_s = float("nan")  # set by sampled_run when the process has exited

    def run(self):
        while not self.stopped.is_set():
            s = emulator_call(self.url, "/_emulator/stats")
            cpu = process_cpu_s(self.pid)
            self.samples.append((time.monotonic(), s["requests_received"], s["answered_200"], s["in_flight"], cpu))
            self.stopped.wait(POLL_S)

    def _span(self, skip: int, answered: int):
        """Indices of the first sample after `skip` requests and of the `answered`-th 200."""
        first = next((k for k, (_, rec, _, _, _) in enumerate(self.samples) if rec > skip), None)
        last = next((k for k, (_, _, ok, _, _) in enumerate(self.samples) if ok >= answered), None)
        return first, last

    def window(self, skip: int, answered: int) -> tuple[float, float]:
        """(seconds from the first request after `skip` ones to the `answered`-th 200,
        mean in-flight over that span)."""
        first, last = self._span(skip, answered)
        if first is None or last is None:
            return float("nan"), 0.0
        start, end = self.samples[first][0], self.samples[last][0]
        inside = [f for t, _, _, f, _ in self.samples if start <= t <= end]
        return max(end - start, POLL_S), sum(inside) / max(1, len(inside))

    def window_cpu_s(self, skip: int, answered: int) -> float:
        """The client's CPU seconds over the same span (from the sample before it)."""
        first, last = self._span(skip, answered)
        if first is None or last is None:
            return float("nan")
        cpus = [c for _, _, _, _, c in self.samples[max(0, first - 1):last + 1] if c == c]
        return cpus[-1] - cpus[0] if len(cpus) > 1 else float("nan")


@dataclasses.dataclass
class Row:
    client: str
    patches: str
    seconds: float
    rate: float
    wall_s: float
    over_quota_429: int
    injected_429: int
    other_faults: int
    peak: int
    mean_in_flight: float
    lost: int
    cpu_s: float = float("nan")  # the client process's user + system CPU seconds, start to exit
    span_cpu_s: float = float("nan")  # of which over the fetch span (`seconds`)
    note: str = ""


def sampled_run(url: str, cmd: list, cwd: str = ROOT) -> tuple[subprocess.CompletedProcess, float, "StatsSampler", dict]:
    """Reset the emulator's stats, run `cmd` in its own process while sampling them; (process,
    wall seconds, the sampler, the emulator's final stats). The process's CPU seconds, start to
    exit, are `sampler.cpu_s`."""
    emulator_call(url, "/_emulator/reset", post=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the emulator is not waited for until the end
    started = time.monotonic()
    popen = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = StatsSampler(url, popen.pid)
    sampler.start()
    out, err = popen.communicate()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(2 * POLL_S)
    sampler.stopped.set()
    sampler.join()
    proc = subprocess.CompletedProcess(cmd, popen.returncode, out, err)
    sampler.cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return proc, wall, sampler, emulator_call(url, "/_emulator/stats")


def measure(name: str, url: str, cmd: list, count_delivered, subset: bool = False, cwd: str = ROOT) -> Row:
    """Reset the emulator, run `cmd` (in folder `cwd`), and read delivered patches, timing and
    quota stats."""
    proc, wall, sampler, stats = sampled_run(url, cmd, cwd)
    delivered, attempted, note = count_delivered(proc)
    skip = max(0, stats["answered_200"] - delivered)  # pixelbeam's describe probe (1 request)
    seconds, mean_in_flight = sampler.window(skip, stats["answered_200"])
    cpu, span_cpu = sampler.cpu_s, sampler.window_cpu_s(skip, stats["answered_200"])
    rejected = stats["rejected_429"]
    return Row(name, f"{delivered}" + (" (subset)" if subset else ""), seconds, delivered / seconds, wall,
               rejected["concurrency"] + rejected["rate"], rejected["injected"],
               sum(stats["faults"].values()), stats["peak_in_flight"], mean_in_flight,
               attempted - delivered, cpu, span_cpu, note)


def client_result(proc) -> tuple[int, int, str]:
    if proc.returncode != 0:
        raise RuntimeError(f"client failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items()))
    return r["delivered"], r["attempted"], f"client errors: {errors}" if errors else ""


def pixelbeam_result(out_dir: str, planned: list[str]):
    """Counts planned patches with a `written` manifest row and a readable (3, H, W) NPY file."""
    def count(proc) -> tuple[int, int, str]:
        rows = {}
        path = os.path.join(out_dir, "manifest.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                rows = {r["patch_id"]: r for r in map(json.loads, f)}
        written = 0
        for pid in planned:
            npy = os.path.join(out_dir, "npy", f"{pid}.npy")
            if rows.get(pid, {}).get("status") == "written" and os.path.exists(npy):
                written += np.load(npy).shape == (len(BANDS), PATCH_PX, PATCH_PX)
        statuses = collections.Counter(r["status"] for r in rows.values())
        summary = " / ".join(line for line in proc.stdout.splitlines() if line.startswith(("planned", "requests")))
        return written, len(planned), f"exit {proc.returncode}; manifest {dict(statuses)}; {summary}"
    return count


# -- the job: the same patches for every client --------------------------------------------------

def write_job(tmp: str, url: str, patches: int, concurrency: int, latency: float, name: str,
              merging_known: bool = True) -> str:
    """A regions file with one point per patch (an even spread over the scene's 16 px cells) and
    a pixelbeam config for the emulator at `url`; returns the config path. `merging_known` False
    leaves `fetch.patches_per_request` out, for a revision older than the key (one request per
    patch was all it did)."""
    import rasterio
    import yaml
    from pyproj import Transformer
    with rasterio.open(SCENE) as ds:
        t, rows, cols, crs = ds.transform, ds.height // PATCH_PX, ds.width // PATCH_PX, ds.crs
    if patches > rows * cols:
        raise SystemExit(f"--patches: at most {rows * cols} {PATCH_PX} px patches fit the scene")
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    cells = [divmod(round(k * rows * cols / patches), cols) for k in range(patches)]
    features = []
    for r, c in cells:
        lon, lat = to_lonlat.transform(*(t * ((c + 0.5) * PATCH_PX, (r + 0.5) * PATCH_PX)))
        features.append({"type": "Feature", "properties": {"id": f"p{r}_{c}"},
                         "geometry": {"type": "Point", "coordinates": [lon, lat]}})
    regions = os.path.join(tmp, "regions.geojson")
    with open(regions, "w") as f:
        json.dump({"type": "FeatureCollection", "features": features}, f)
    doc = {"source": {"kind": "earthengine", "asset": ASSET, "url": url, "credentials": "anonymous",
                      "project": "bench", "mask": "none"},
           "regions": regions,
           "grid": {"crs": crs.to_string(), "scale": [t.a, -t.e], "origin": [t.c, t.f], "patch_size": PATCH_PX},
           # every answer written, masked or not, as the other clients keep every answer
           "output": {"path": os.path.join(tmp, name), "formats": ["npy"], "keep_empty": True},
           # one request per patch, as every other client sends (merged requests, Earth Engine's
           # default, would fetch neighbouring patches together: benchmarks/scale_job.py)
           "fetch": {"max_concurrent_requests": concurrency, "patches_per_request": 1,
                     "max_requests_per_second": 10 * concurrency / latency, "timeout_s": TIMEOUT_S}}
    if not merging_known:
        del doc["fetch"]["patches_per_request"]
    path = os.path.join(tmp, f"{name}{'' if merging_known else '-before'}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def plan(config_path: str) -> list:
    """pixelbeam's own plan of the job: [(patch_id, PixelGrid)] (sends one describe probe)."""
    from pixelbeam.pipeline.config import load_config
    from pixelbeam.pipeline.plan import prepare_job
    return [(s.patch_id, s.pixel_grid()) for s in prepare_job(load_config(config_path)).specs]


def run_clients(args, tmp: str, catalog: str, faults: float, kinds: list[str]) -> list[Row]:
    proc, url = start_emulator(catalog, args.latency, args.concurrency, args.max_rps, faults)
    try:
        tag = f"faults{faults:g}" if faults else "clean"
        config = write_job(tmp, url, args.patches, args.concurrency, args.latency, f"pixelbeam-{tag}")
        specs = plan(config)
        grids_file = os.path.join(tmp, "grids.json")
        with open(grids_file, "w") as f:
            json.dump([g for _, g in specs], f)
        me = [sys.executable, os.path.abspath(__file__), "--url", url, "--grids", grids_file]
        suffix = f" {faults:.0%} faults" if faults else ""
        rows = []
        for kind in kinds:
            print(f"  running {kind}{suffix} ...", file=sys.stderr, flush=True)
            if kind == "pixelbeam":
                out = os.path.join(tmp, f"pixelbeam-{tag}")
                shutil.rmtree(out, ignore_errors=True)
                rows.append(measure("pixelbeam" + suffix, url, [sys.executable, "-m", "pixelbeam", "run", config],
                                    pixelbeam_result(out, [pid for pid, _ in specs])))
                if args.before:  # the same job with the code of an earlier revision, right after
                    print(f"  running pixelbeam ({args.before}){suffix} ...", file=sys.stderr, flush=True)
                    shutil.rmtree(out, ignore_errors=True)
                    sections = os.path.join(args.before_root, "pipeline", "config", "sections.py")
                    known = os.path.exists(sections) and "patches_per_request" in open(sections).read()
                    before_config = write_job(tmp, url, args.patches, args.concurrency, args.latency,
                                              f"pixelbeam-{tag}", merging_known=known)
                    rows.append(measure(f"pixelbeam ({args.before})" + suffix, url,
                                        [sys.executable, "-m", "pixelbeam", "run", before_config],
                                        pixelbeam_result(out, [pid for pid, _ in specs]), cwd=args.before_root))
            else:
                threads = {"ideal": args.concurrency, "eepool": args.concurrency, "notebook": 64, "sequential": 1}[kind]
                label = {"ideal": f"ideal ({threads} threads)", "eepool": f"ee pool ({threads} threads)",
                         "notebook": "notebook (64 threads)",
                         "sequential": "sequential loop"}[kind] + suffix
                cmd = me + ["--client", kind, "--threads", str(threads), "--sequential-s", str(args.sequential_s)]
                rows.append(measure(label, url, cmd, client_result, subset=(kind == "sequential")))
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def print_table(rows: list[Row], quota_rate: float) -> None:
    ideal = {}
    for r in rows:
        if r.client.startswith("ideal"):
            ideal["faults" in r.client] = r.rate
    head = ["client", "patches", "seconds", "patches/s", "/ (C/L)", "/ ideal", "429 over C",
            "429 inj.", "5xx/reset/trunc", "peak in flight", "mean in flight", "lost", "wall s",
            "wall patches/s", "wall / ideal", "CPU s", "CPU s/1000", "span CPU s/1000"]

    def per_1000(cpu: float, r: Row) -> str:
        n = int(r.patches.split()[0])
        return f"{1000 * cpu / n:.2f}" if n else "nan"

    body = []
    for r in rows:
        ref = ideal.get("faults" in r.client, float("nan"))
        n = int(r.patches.split()[0])
        body.append([r.client, r.patches, f"{r.seconds:.1f}", f"{r.rate:.2f}", f"{r.rate / quota_rate:.3f}",
                     f"{r.rate / ref:.3f}", str(r.over_quota_429), str(r.injected_429), str(r.other_faults),
                     str(r.peak), f"{r.mean_in_flight:.1f}", str(r.lost), f"{r.wall_s:.1f}",
                     f"{n / r.wall_s:.2f}", f"{n / r.wall_s / ref:.3f}", f"{r.cpu_s:.1f}", per_1000(r.cpu_s, r),
                     per_1000(r.span_cpu_s, r)])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    for line in [head, ["-" * w for w in widths]] + body:
        print(" | ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths))))
    for r in rows:
        if r.note:
            print(f"  {r.client}: {r.note}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=1.0, help="emulator latency per request, s (L)")
    p.add_argument("--concurrency", type=int, default=40, help="emulator in-flight quota (C)")
    p.add_argument("--patches", type=int, default=800, help="patches per client (N >= 20*C)")
    p.add_argument("--faults", type=float, default=0.05, help="injected transient fault rate (0 = skip)")
    p.add_argument("--max-rps", type=float, default=0.0, help="emulator rate quota, requests/s (0 = off)")
    p.add_argument("--sequential-s", type=float, default=20.0, help="time budget of the sequential loop, s")
    p.add_argument("--clients", default=",".join(CLIENTS),
                   help="clients to run, comma-separated (ideal first: the ratios are to it)")
    p.add_argument("--quick", action="store_true", help="smoke run: L 0.5 s, C 10, 200 patches, 5 s loop")
    p.add_argument("--before", metavar="REV", help="also run pixelbeam with the code of git revision REV, after it")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON (benchmarks/run_all.py)")
    p.add_argument("--client", help=argparse.SUPPRESS)  # internal: run one baseline client
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--grids", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.client:
        with open(args.grids) as f:
            grids = json.load(f)
        print(json.dumps(run_client(args.client, args.url, grids, args.threads, args.sequential_s)))
        return 0
    if args.quick:
        args.latency, args.concurrency, args.patches, args.sequential_s = 0.5, 10, 200, 5.0
    if args.patches < 20 * args.concurrency:
        print(f"warning: {args.patches} patches are fewer than 20 waves of {args.concurrency}", file=sys.stderr)
    quota_rate = args.concurrency / args.latency
    kinds = args.clients.split(",")
    unknown = [k for k in kinds if k not in CLIENTS]
    if unknown:
        print(f"--clients: unknown client {unknown[0]!r}; choose among {', '.join(CLIENTS)}", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="pixelbeam-ee-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        args.before_root = checkout(args.before, tmp) if args.before else None
        catalog = os.path.join(tmp, "catalog.json")
        with open(catalog, "w") as f:
            json.dump({"images": {ASSET: {"path": SCENE, "bands": BANDS}}}, f)
        rows = run_clients(args, tmp, catalog, 0.0, kinds)
        if args.faults:
            again = [k for k in kinds if k in ("ideal", "eepool", "pixelbeam")]
            rows += run_clients(args, tmp, catalog, args.faults, again)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"L {args.latency:g} s | C {args.concurrency} | N {args.patches} patches of {PATCH_PX}x{PATCH_PX} px x "
          f"{len(BANDS)} bands (1 getPixels request each) | emulator rate quota "
          f"{f'{args.max_rps:g}/s' if args.max_rps else 'off'} | quota C/L = {quota_rate:g} patches/s | "
          f"{os.cpu_count()} cores")
    print_table(rows, quota_rate)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "ee_throughput", "latency_s": args.latency, "concurrency": args.concurrency,
                       "patches": args.patches, "faults": args.faults, "quota_rate": quota_rate,
                       "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
