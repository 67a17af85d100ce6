"""Pictures of a written output: `preview.png` (a contact sheet of sampled patches) and
`footprints.png` (where the patches are). `pixelbeam preview OUT` (re)writes both.

preview.png: a reproducible sample (`--sample N` patches, `--seed S`, drawn from the written
patch ids in sorted order, so the same seed gives the same patches whatever order the manifest
rows came in) rendered with Earth Engine's visualization parameters through
`pixelbeam.transforms.formats.visualize` (bands, min, max, gamma, palette for one band). Without min/max the
stretch is the 2nd..98th percentile of the sample's valid pixels, band by band, so that a
uint16 or float source shows something. Pixels come from the NPY files (or the TFRecords when
NPY was not written); the mask from the TFRecords when they were written (an NPY file has no
mask), and masked pixels are drawn as a magenta/grey checkerboard. With a margin, a cyan frame
marks the patch proper. Each tile is labelled with its patch id (Pillow's default font).

With layers, the first input layer is shown (`--layer`) and the first target layer's classes are
drawn over it (`--target`, `--target none` for none), a colour per class value
(`visualize.CLASS_COLORS`) with a legend; a vector layer's background and ignore value are left
unpainted.

footprints.png: every manifest row's footprint in lon/lat, coloured by status (written green,
filtered orange, failed red), over the job's regions (blue) and, for a raster source, over a
low-resolution overview of the raster (decimated read, warped to lon/lat, stretched like the
preview). Drawn with matplotlib (Agg) for lon/lat axes, a legend and the polygon collections;
the axes' aspect is 1/cos(mid latitude) so that shapes look as on the ground.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import random
import re
import sys
import threading
from typing import Optional, Sequence

import numpy as np

from pixelbeam.transforms.formats import visualize
from pixelbeam.transforms.loaders.common import (AUTO, join_path, load_npy, read_dataset_json, read_manifest_rows,
                                                 tfrecord_files, to_chw)
from pixelbeam.transforms.loaders.samples import example_sample, layer_table
from pixelbeam.transforms.patch import FAILED, FILTERED, WRITTEN
from pixelbeam.transforms.formats.records import iter_examples

log = logging.getLogger("pixelbeam")

PREVIEW_FILE = "preview.png"
FOOTPRINTS_FILE = "footprints.png"
DEFAULT_SAMPLE = 16
TILE_MIN, TILE_MAX = 128, 256  # displayed tile size, px: small patches are zoomed, large ones decimated
PAD, LABEL_H, HEADER_H = 6, 14, 34
MASK_COLORS = ((255, 0, 255), (90, 90, 90))  # magenta / grey checkerboard
CHECKER_PX = 4
FRAME_COLOR = (0, 255, 255)
STATUS_COLORS = {WRITTEN: "#2ca02c", FILTERED: "#ff7f0e", FAILED: "#d62728"}
FIGURE_IN, FIGURE_DPI = 8, 100  # footprints.png is 800 x 800 px
OVERVIEW_PX = 800  # long side of the lon/lat overview canvas
RUN_HOOK_MAX_PATCHES = 100_000  # above this, `pixelbeam run` leaves the pictures to `pixelbeam preview`
MASK_SCAN_RECORDS = 100_000  # records read at most to find the sample's masks when NPY holds the pixels


# -- sampling and reading -----------------------------------------------------------------------

def written_ids(rows: Sequence[dict]) -> list[str]:
    return sorted(r["patch_id"] for r in rows if r.get("status") == WRITTEN)


def sample_ids(ids: Sequence[str], n: int, seed: int) -> list[str]:
    """A reproducible sample of `n` ids (all of them if fewer), sorted: depends only on the set
    of ids, `n` and `seed`."""
    ids = sorted(ids)
    return sorted(random.Random(seed).sample(ids, min(n, len(ids))))


_GRID_ID = re.compile(r"^(.*)_r(-?\d+)_c(-?\d+)$")


def display_order(ids: Sequence[str]) -> list[str]:
    """Ids in reading order: by CRS tag, then row (north to south), then column (west to east)."""
    def key(pid):
        m = _GRID_ID.match(pid)
        return (m.group(1), int(m.group(2)), int(m.group(3)), pid) if m else (pid, 0, 0, pid)
    return sorted(ids, key=key)


def _scan_records(output_path: str, meta: dict, wanted: set, with_data: bool, layers: Sequence[dict]) -> dict:
    """{patch_id: {"image"?, "mask", "target"?}} of the wanted ids from the TFRecords, reading
    shards until all are found (for masks only, at most MASK_SCAN_RECORDS records)."""
    found: dict = {}
    try:
        files = tfrecord_files(output_path, meta)
    except FileNotFoundError:
        return found
    for n, example in enumerate(iter_examples(files, meta["tfrecord"].get("compression", "GZIP"))):
        if not with_data and n >= MASK_SCAN_RECORDS:
            log.warning("preview: masks of %d sampled patches not found in the first %d records; drawn unmasked",
                        len(wanted) - len(found), n)
            break
        pid = example["patch_id"][0].decode("utf-8")
        if pid in wanted and pid not in found:
            sample = example_sample(example, layers, meta)
            found[pid] = sample if with_data else {"mask": sample.get("mask")}
            if len(found) == len(wanted):
                break
    return found


def preview_layers(meta: dict, layer: Optional[str] = None, target: Optional[str] = AUTO):
    """(the input layer shown, the target layer drawn over it or None): `layer` (default the
    first input layer) and `target` (AUTO: the first target layer; None: no overlay)."""
    table = layer_table(meta)
    by_name = {entry["name"]: entry for entry in table}
    for name in (layer, target):
        if name not in (None, AUTO) and name not in by_name:
            raise FileNotFoundError(f"--layer/--target: {name!r} is not a layer of this output; its layers: "
                                    f"{', '.join(by_name)}")
    shown = by_name[layer] if layer else next(e for e in table if e["role"] == "input")
    if target == AUTO:
        drawn = next((e for e in table if e["role"] == "target"), None)
    else:
        drawn = by_name.get(target) if target else None
    return shown, drawn


def _npy_files(ids, by_id: dict, template: str) -> dict:
    return {pid: template.format(patch_id=pid) for pid in ids
            if template.format(patch_id=pid) in (by_id[pid].get("files") or ())}


def load_patches(output_path: str, ids: Sequence[str], rows: Sequence[dict], meta: dict,
                 shown: Optional[dict] = None, target: Optional[dict] = None) -> list[dict]:
    """[{"patch_id", "data" (C, H, W), "mask" (H, W) bool or None, "target" (H, W) or None}] of
    the sampled ids: the `shown` layer (default the only or first input layer) and `target`."""
    if shown is None:
        shown, _ = preview_layers(meta, target=None)
    by_id = {r["patch_id"]: r for r in rows}
    npy = _npy_files(ids, by_id, shown["npy"])
    target_npy = _npy_files(ids, by_id, target["npy"]) if target else {}
    need_records = len(npy) < len(ids) or (target is not None and len(target_npy) < len(ids))
    from_records = _scan_records(output_path, meta, set(ids), with_data=need_records,
                                 layers=[shown] + ([target] if target else []))
    axis = int(meta.get("bands_axis", 0))
    out = []
    for pid in ids:
        record = from_records.get(pid, {})
        if pid in npy:
            data = to_chw(load_npy(join_path(output_path, npy[pid])), axis)
        elif "image" in record:
            data = record["image"]
        else:
            log.warning("preview: patch %s is neither in an NPY file nor in the TFRecords; skipped", pid)
            continue
        if data.ndim == 4:  # a time stack: show its first step
            data = data[0]
        labels = None
        if target is not None:
            labels = to_chw(load_npy(join_path(output_path, target_npy[pid])), axis)[..., 0, :, :] \
                if pid in target_npy else record.get("target")
            labels = None if labels is None else np.asarray(labels).reshape((-1,) + np.shape(labels)[-2:])[0]
        mask = record.get("mask")
        out.append({"patch_id": pid, "data": np.asarray(data), "target": labels,
                    "mask": None if mask is None else np.asarray(mask) > 0.5})
    return out


def target_painted(labels: np.ndarray, target: dict) -> np.ndarray:
    """The target pixels drawn: not the background nor the ignore value of a vector layer."""
    painted = np.ones(labels.shape, dtype=bool)
    for key in ("background", "ignore_value"):
        if target.get(key) is not None:
            painted &= labels != target[key]
    return painted


# -- visualization parameters -------------------------------------------------------------------

def resolve_preview_vis(meta: dict, patches: Sequence[dict], bands=None, vmin=None, vmax=None, gamma=None,
                        palette=None) -> visualize.VisParams:
    """Earth Engine-style parameters; missing min/max become the sample's 2..98th percentiles."""
    names = list(meta["bands"])
    probe = visualize.resolve_vis(names, meta.get("dtype", "float32"), bands, vmin, vmax, gamma, palette)
    if vmin is None or vmax is None:
        lows, highs = [], []
        for band in probe.bands:
            i = names.index(band)
            values = [p["data"][i][p["mask"]] if p["mask"] is not None else p["data"][i].ravel() for p in patches]
            values = np.concatenate(values).astype(np.float64) if values else np.zeros(0)
            values = values[np.isfinite(values)]
            lo, hi = np.percentile(values, [2, 98]) if values.size else (0.0, 1.0)
            hi = hi if hi > lo else lo + 1.0
            lows.append(float(lo))
            highs.append(float(hi))
        vmin = lows if vmin is None else vmin
        vmax = highs if vmax is None else vmax
    return visualize.resolve_vis(names, meta.get("dtype", "float32"), probe.bands, vmin, vmax, gamma, palette)


def _checkerboard(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    odd = ((yy // CHECKER_PX + xx // CHECKER_PX) % 2).astype(bool)
    return np.where(odd[..., None], np.array(MASK_COLORS[1], np.uint8), np.array(MASK_COLORS[0], np.uint8))


def render_tile(patch: dict, vis: visualize.VisParams, band_names: Sequence[str],
                target: Optional[dict] = None) -> np.ndarray:
    """One patch as RGB uint8, masked pixels on the checkerboard (before zooming), its target
    layer's classes drawn over it when `target` describes one."""
    data = patch["data"]
    mask = patch["mask"] if patch["mask"] is not None else np.ones(data.shape[-2:], bool)
    rgba = visualize.render_rgb(data, mask, vis, band_names, alpha=True)
    board = _checkerboard(*rgba.shape[:2])
    rgb = np.where(rgba[..., 3:4] > 0, rgba[..., :3], board).astype(np.uint8)
    labels = patch.get("target")
    if target is not None and labels is not None and np.dtype(target["dtype"]).kind in "biu":
        rgb = visualize.overlay_classes(rgb, labels.astype(np.int64), target_painted(labels, target))
    return rgb


def _fmt(values: Sequence[float]) -> str:
    vals = [f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}" for v in values]
    return vals[0] if len(set(vals)) == 1 else ",".join(vals)


# -- preview.png --------------------------------------------------------------------------------

def tile_scale(size: int) -> tuple[int, int]:
    """(zoom, step) for a patch side of `size` px: integer zoom up to >= TILE_MIN, or an
    integer decimation step down to <= TILE_MAX."""
    if size < TILE_MIN:
        return max(1, TILE_MIN // size), 1
    if size > TILE_MAX:
        return 1, math.ceil(size / TILE_MAX)
    return 1, 1


def contact_sheet(patches: Sequence[dict], vis: visualize.VisParams, band_names: Sequence[str], margin: int,
                  title: str, subtitle: str, target: Optional[dict] = None):
    """A Pillow image: a header, then the tiles in rows, each with its patch id below; with a
    `target` layer, its classes over the tiles and a legend of the classes shown."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = patches[0]["data"].shape[-2:]
    zoom, step = tile_scale(max(h, w))
    th, tw = math.ceil(h / step) * zoom, math.ceil(w / step) * zoom
    cols = max(1, math.ceil(math.sqrt(len(patches))))
    nrows = math.ceil(len(patches) / cols)
    width = max(PAD + cols * (tw + PAD), 520 if target is None else 680)
    height = HEADER_H + nrows * (th + LABEL_H + PAD) + PAD
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    draw.text((PAD, 3), title, fill=(0, 0, 0), font=font)
    draw.text((PAD, 18), subtitle, fill=(60, 60, 60), font=font)
    if any(p["mask"] is not None for p in patches):
        legend_x = width - PAD - 110
        sheet.paste(Image.fromarray(_checkerboard(10, 10)), (legend_x, 19))
        draw.text((legend_x + 14, 18), "masked pixels", fill=(60, 60, 60), font=font)
    if target is not None:
        _class_legend(draw, patches, target, width - PAD - 110, font)
    for k, patch in enumerate(patches):
        r, c = divmod(k, cols)
        x0, y0 = PAD + c * (tw + PAD), HEADER_H + r * (th + LABEL_H + PAD)
        rgb = render_tile(patch, vis, band_names, target)[::step, ::step]
        tile = Image.fromarray(np.ascontiguousarray(rgb)).resize((tw, th), Image.NEAREST)
        sheet.paste(tile, (x0, y0))
        if margin:
            m = margin * zoom / step
            draw.rectangle([x0 + m, y0 + m, x0 + tw - 1 - m, y0 + th - 1 - m], outline=FRAME_COLOR)
        label = patch["patch_id"]
        while len(label) > 4 and draw.textlength(label, font=font) > tw:
            label = "…" + label[2:]
        draw.text((x0, y0 + th + 1), label, fill=(0, 0, 0), font=font)
    return sheet


def _class_legend(draw, patches: Sequence[dict], target: dict, right: int, font) -> None:
    """Swatches of the target classes shown, right-aligned in the header's first line."""
    values = sorted({int(v) for p in patches if p.get("target") is not None
                     for v in np.unique(p["target"][target_painted(p["target"], target)])})
    names = {v: k for k, v in (target.get("classes") or {}).items()}
    x = right + 110
    for value in reversed(values):
        text = f"{value} {names.get(value, '')}".strip()
        x -= int(draw.textlength(text, font=font)) + 20
        draw.rectangle([x, 4, x + 10, 14], fill=visualize.class_color(value))
        draw.text((x + 14, 3), text, fill=(60, 60, 60), font=font)


def write_preview(output_path: str, meta: dict, rows: Sequence[dict], sample: int = DEFAULT_SAMPLE, seed: int = 0,
                  bands=None, vmin=None, vmax=None, gamma=None, palette=None, layer=None, target=AUTO):
    """Write preview.png; returns (its path, or None when there is nothing to show, the sampled
    ids, the resolved VisParams or None). With layers, `layer` is the input layer shown and
    `target` the target layer drawn over it (AUTO: the first; None: none)."""
    ids = sample_ids(written_ids(rows), sample, seed)
    if not ids:
        log.warning("preview: %s has no written patch; no preview.png", output_path)
        return None, [], None
    shown, drawn = preview_layers(meta, layer, target)
    drawn_meta = next((e for e in meta.get("layers", []) if drawn and e["name"] == drawn["name"]), {})
    drawn = {**drawn_meta, **drawn} if drawn else None
    patches = load_patches(output_path, display_order(ids), rows, meta, shown, drawn)
    if not patches:
        return None, ids, None
    meta = {**meta, "bands": shown["bands"], "dtype": shown["dtype"]}
    vis = resolve_preview_vis(meta, patches, bands, vmin, vmax, gamma, palette)
    n_written = len(written_ids(rows))
    title = f"{os.path.basename(output_path.rstrip('/')) or output_path}: {len(patches)} of {n_written} " \
            f"written patches (seed {seed}), {patches[0]['data'].shape[-1]} px"
    subtitle = f"bands {','.join(vis.bands)}  min {_fmt(vis.min)}  max {_fmt(vis.max)}  gamma {_fmt(vis.gamma)}"
    if vis.palette:
        subtitle += f"  palette {len(vis.palette)} colours"
    if all(p["mask"] is None for p in patches):
        subtitle += "  (mask unknown: no TFRecords)"
    if drawn is not None:
        subtitle += f"  target {drawn['name']} drawn over {shown['name']}"
    sheet = contact_sheet(patches, vis, meta["bands"], int(meta.get("margin", 0)), title, subtitle, drawn)
    path = join_path(output_path, PREVIEW_FILE)
    _write_png(path, sheet)
    return path, ids, vis


# -- footprints.png -----------------------------------------------------------------------------

def _source_indexes(ds, cfg_bands, n_bands: int) -> list[int]:
    """1-based band indexes of the dataset's bands in a raster (config indexes or descriptions)."""
    if not cfg_bands:
        return list(range(1, n_bands + 1))
    descriptions = list(ds.descriptions or ())
    return [b if isinstance(b, int) else descriptions.index(b) + 1 for b in cfg_bands]


def raster_overview(uris: Sequence[str], cfg_bands, band_names: Sequence[str], vis: visualize.VisParams,
                    extent: tuple[float, float, float, float]) -> Optional[np.ndarray]:
    """An RGBA uint8 overview of the raster(s) on a lon/lat canvas over `extent`
    (min_lon, min_lat, max_lon, max_lat), later files on top where valid, or None."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    lon0, lat0, lon1, lat1 = extent
    aspect = (lat1 - lat0) / max((lon1 - lon0) * math.cos(math.radians((lat0 + lat1) / 2)), 1e-12)
    cw = OVERVIEW_PX if aspect <= 1 else max(1, round(OVERVIEW_PX / aspect))
    ch = max(1, round(cw * aspect)) if aspect <= 1 else OVERVIEW_PX
    dst_transform = Affine((lon1 - lon0) / cw, 0, lon0, 0, -(lat1 - lat0) / ch, lat1)
    canvas = np.zeros((len(band_names), ch, cw), np.float64)
    valid = np.zeros((ch, cw), bool)
    for uri in uris:
        with rasterio.open(uri) as ds:
            indexes = _source_indexes(ds, cfg_bands, len(band_names))
            step = max(1, math.ceil(max(ds.width, ds.height) / 1024))
            shape = (max(1, ds.height // step), max(1, ds.width // step))
            src_transform = ds.transform * Affine.scale(ds.width / shape[1], ds.height / shape[0])
            data = ds.read(indexes, out_shape=(len(indexes),) + shape, resampling=Resampling.nearest)
            mask = ds.dataset_mask(out_shape=shape) > 0
            warped = np.zeros((len(indexes), ch, cw), np.float64)
            reproject(data.astype(np.float64), warped, src_transform=src_transform, src_crs=ds.crs,
                      dst_transform=dst_transform, dst_crs="EPSG:4326", resampling=Resampling.nearest)
            warped_mask = np.zeros((ch, cw), np.uint8)
            reproject(mask.astype(np.uint8), warped_mask, src_transform=src_transform, src_crs=ds.crs,
                      dst_transform=dst_transform, dst_crs="EPSG:4326", resampling=Resampling.nearest,
                      src_nodata=None, dst_nodata=0)
            here = warped_mask > 0
            canvas[:, here] = warped[:, here]
            valid |= here
    if not valid.any():
        return None
    return visualize.render_rgb(canvas, valid, vis, band_names, alpha=True)


def region_outlines(geometries) -> tuple[list, list]:
    """(lines, points) of `geometries` in lon/lat: every ring or line as an (n, 2) array, every
    point as (x, y); drawn as one collection each, not one matplotlib call per region."""
    lines, points = [], []
    stack = list(geometries)
    while stack:
        geometry = stack.pop()
        kind = geometry.geom_type
        if kind == "Polygon":
            lines.extend(np.asarray(ring.coords)[:, :2] for ring in [geometry.exterior, *geometry.interiors])
        elif kind in ("MultiPolygon", "GeometryCollection", "MultiPoint", "MultiLineString"):
            stack.extend(geometry.geoms)
        elif kind == "Point":
            points.append((geometry.x, geometry.y))
        else:  # lines
            lines.append(np.asarray(geometry.coords)[:, :2])
    return lines, points


def _draw_regions(ax, geometries, color: str) -> None:
    from matplotlib.collections import LineCollection
    lines, points = region_outlines(geometries)
    if lines:
        ax.add_collection(LineCollection(lines, colors=color, linewidths=1.4, zorder=3))
    if points:
        xy = np.asarray(points)
        ax.plot(xy[:, 0], xy[:, 1], marker="o", markersize=4, linestyle="none", color=color, zorder=3)


def write_footprints_png(output_path: str, meta: dict, rows: Sequence[dict],
                         vis: Optional[visualize.VisParams] = None) -> Optional[str]:
    """Write footprints.png: the manifest's footprints by status over regions and overview."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch as LegendPatch

    from pixelbeam.pipeline.footprints import row_rings
    from pixelbeam.transforms.planning.regions import RegionError, load_regions

    if not rows:
        log.warning("footprints: %s has no manifest row; no footprints.png", output_path)
        return None
    rings = row_rings(rows)
    config = meta.get("config") or {}
    regions = []
    if config.get("regions") is not None:
        try:
            regions = load_regions(config["regions"], skipped=[] if config.get("regions_outside") == "skip" else None)
        except RegionError as e:
            log.warning("footprints: regions not drawn (%s)", e)
    pts = np.concatenate([r.reshape(-1, 2) for r in rings])
    boxes = [(pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())]
    boxes += [r.geometry.bounds for r in regions]
    lon0, lat0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    lon1, lat1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    pad = 0.05 * max(lon1 - lon0, lat1 - lat0, 1e-6)
    extent = (lon0 - pad, lat0 - pad, lon1 + pad, lat1 + pad)

    fig = Figure(figsize=(FIGURE_IN, FIGURE_IN), dpi=FIGURE_DPI)
    ax = fig.add_subplot(1, 1, 1)
    source = config.get("source") or next((layer for layer in config.get("layers") or []
                                           if layer.get("role") == "input"), {})
    shown = layer_table(meta)[0] if "layers" not in meta else next(
        (e for e in layer_table(meta) if e["name"] == source.get("name")), layer_table(meta)[0])
    note = ""
    if source.get("kind", "raster") == "raster" and source.get("uri"):
        uris = [source["uri"]] if isinstance(source["uri"], str) else list(source["uri"])
        try:
            if vis is None or list(vis.bands) != [b for b in vis.bands if b in shown["bands"]]:
                vis = visualize.resolve_vis(shown["bands"], shown["dtype"])
            overview = raster_overview(uris, source.get("bands"), shown["bands"], vis, extent)
            if overview is not None:
                ax.imshow(overview, extent=(extent[0], extent[2], extent[1], extent[3]), origin="upper",
                          interpolation="nearest", zorder=0)
        except Exception as e:  # a moved or remote file: the footprints still tell where
            log.warning("footprints: no raster overview (%s: %s)", type(e).__name__, e)
            note = " (no raster overview)"
    else:
        note = " (Earth Engine source: no overview)"
    counts = {}
    for status, color in STATUS_COLORS.items():
        polys = [ring for ring, row in zip(rings, rows) if row.get("status") == status]
        counts[status] = len(polys)
        if polys:
            ax.add_collection(PolyCollection(polys, facecolors=matplotlib.colors.to_rgba(color, 0.18),
                                             edgecolors=color, linewidths=0.8, zorder=2))
    _draw_regions(ax, [region.geometry for region in regions], "#1f4fd1")
    ax.set_xlim(extent[0], extent[2])
    ax.set_ylim(extent[1], extent[3])
    ax.set_aspect(1.0 / math.cos(math.radians((extent[1] + extent[3]) / 2)))
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.ticklabel_format(useOffset=False)
    name = os.path.basename(output_path.rstrip("/")) or output_path
    ax.set_title(f"{name}: {len(rows)} planned patches{note}", fontsize=10)
    handles = [LegendPatch(facecolor=matplotlib.colors.to_rgba(c, 0.18), edgecolor=c, label=f"{s} ({counts[s]})")
               for s, c in STATUS_COLORS.items()]
    if regions:
        handles.append(Line2D([], [], color="#1f4fd1", linewidth=1.4, label=f"regions ({len(regions)})"))
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.85)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.08, top=0.94)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    path = join_path(output_path, FOOTPRINTS_FILE)
    _write_bytes(path, buf.getvalue())
    return path


# -- both ---------------------------------------------------------------------------------------

def _write_bytes(path: str, data: bytes) -> None:
    if "://" in path:
        from pixelbeam.transforms.storage import write_atomically
        write_atomically(path, data)
        return
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_png(path: str, image) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    _write_bytes(path, buf.getvalue())


def write_previews(output_path: str, sample: int = DEFAULT_SAMPLE, seed: int = 0, bands=None, vmin=None, vmax=None,
                   gamma=None, palette=None, layer=None, target=AUTO) -> dict:
    """Write preview.png and footprints.png for a finished output; returns
    {"preview": path or None, "footprints": path or None, "sample": [patch ids]}."""
    meta = read_dataset_json(output_path)
    rows = read_manifest_rows(output_path)
    preview, ids, vis = write_preview(output_path, meta, rows, sample, seed, bands, vmin, vmax, gamma, palette,
                                      layer, target)
    footprints = write_footprints_png(output_path, meta, rows, vis)
    return {"preview": preview, "footprints": footprints, "sample": ids}


def count_lines(path: str) -> int:
    """Lines of a file, streamed (a manifest can be large)."""
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems
        stream = FileSystems.open(path)
    else:
        stream = open(path, "rb")
    with stream:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))


def try_write_previews(output_path: str) -> None:
    """write_previews_quietly, its line printed."""
    line = write_previews_quietly(output_path)
    if line:
        print(line)


def write_previews_quietly(output_path: str, warm_up: Optional[threading.Thread] = None) -> Optional[str]:
    """write_previews for the end of a run; returns the line `pixelbeam run` prints (None when
    nothing was drawn). A failure is a warning, never an error; outputs of more than
    RUN_HOOK_MAX_PATCHES patches are left to `pixelbeam preview`. `warm_up`: the thread of
    `warm_up_pictures`, joined first."""
    if warm_up is not None:
        warm_up.join()
    try:
        n = count_lines(join_path(output_path, "manifest.jsonl"))
        if n > RUN_HOOK_MAX_PATCHES:
            return f"pictures: skipped for {n} manifest rows; run `pixelbeam preview {output_path}`"
        result = write_previews(output_path)
        written = [os.path.basename(result[k]) for k in ("preview", "footprints") if result[k]]
        return f"pictures: {', '.join(written)} in {output_path}" if written else None
    except Exception as e:  # pictures are a convenience; the run's outputs stand without them
        log.warning("pictures not written (%s: %s); run `pixelbeam preview %s`", type(e).__name__, e, output_path)
        return None


def _numbers(values):
    if values is None:
        return None
    return values[0] if len(values) == 1 else values


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pixelbeam preview",
                                     description="Write preview.png and footprints.png for a written output.")
    parser.add_argument("output", help="an output folder written by `pixelbeam run`")
    parser.add_argument("--bands", nargs="+", help="1 or 3 band names (default: the first 3, or the only band)")
    parser.add_argument("--min", nargs="+", type=float, help="value(s) shown as black (default: 2nd percentile)")
    parser.add_argument("--max", nargs="+", type=float, help="value(s) shown as white (default: 98th percentile)")
    parser.add_argument("--gamma", nargs="+", type=float, help="gamma, one or one per band (default 1)")
    parser.add_argument("--palette", nargs="+", help="colours for one band, e.g. 000000 00ff00 or red blue")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help=f"patches shown (default {DEFAULT_SAMPLE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument("--layer", help="with layers: the input layer shown (default: the first)")
    parser.add_argument("--target", default=AUTO,
                        help="with layers: the target layer drawn over it (default: the first; none: no overlay)")
    args = parser.parse_args(argv)
    bands = [b for part in args.bands for b in part.split(",") if b] if args.bands else None
    try:
        result = write_previews(args.output, args.sample, args.seed, bands, _numbers(args.min), _numbers(args.max),
                                _numbers(args.gamma), args.palette, args.layer,
                                None if args.target == "none" else args.target)
    except (FileNotFoundError, visualize.VisualizationError) as e:
        message = str(e).replace("output.visualization.", "--")
        print(f"pixelbeam preview: error: {message}", file=sys.stderr)
        return 2
    for key in ("preview", "footprints"):
        if result[key]:
            print(result[key])
    return 0


if __name__ == "__main__":
    sys.exit(main())
