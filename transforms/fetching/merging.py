"""Merged pixel requests: neighbouring patches of the global grid fetched in one request. Pure.

A server that computes each output pixel of a request's grid on its own (Earth Engine's
getPixels / computePixels) answers the union window of a few neighbouring patches with exactly
the pixels it would answer for each patch, so one request can serve them all; a quota counted
in requests (Earth Engine: 100 requests/s, 40 concurrent per project) then moves that many
times more patches. Patches are grouped by blocks of the grid (`block_shape`: `cap` patches
as a `cols` x `rows` rectangle of grid cells, so a block's members are neighbours), a block's
members that share one pixel grid (CRS, pixel size, patch size, margin, dates) become one
`MergedWindow` if the union of their fetch windows fits the request limits in one request
(bytes of every band and margins, px a side; `plan_parts` gives one part), else the block is
tried row by row, and what still does not fit is fetched patch by patch. `cut` gives each
patch its pixels back (a copy: C-contiguous, as a single request's answer).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Hashable, Optional, Sequence

from pixelbeam.transforms.fetching.sizing import RequestLimits, plan_parts
from pixelbeam.transforms.patch import PatchSpec

OFFSET_TOLERANCE = 1e-6  # px: patch origins this close to a whole pixel offset are on one pixel grid


def block_shape(cap: int) -> tuple[int, int]:
    """(cols, rows) of a block of at most `cap` patches, as square as it can be: 16 -> 4 x 4,
    8 -> 4 x 2, 2 -> 2 x 1."""
    rows = max(1, math.isqrt(max(1, cap)))
    return max(1, cap // rows), rows


def grid_key(spec: PatchSpec) -> Hashable:
    """What patches must share to be cut from one request: the pixel grid and the window shape."""
    a, b, _, d, e, _ = spec.transform
    return (spec.crs, a, b, d, e, spec.width, spec.height, spec.margin, spec.start, spec.end)


def block_key(spec: PatchSpec, cap: int) -> str:
    """The block of the global grid `spec` falls in (a string: a Beam key any coder takes)."""
    cols, rows = block_shape(cap)
    return f"{spec.crs}|{spec.row // rows}|{spec.col // cols}|{spec.start}|{spec.end}|{spec.width}x{spec.height}"


@dataclasses.dataclass(frozen=True)
class MergedWindow:
    """One request for the union window of `members`: `spec` is that window (margin 0), and
    `offsets[i]` the (row, col) px of member i's fetch window inside it."""

    spec: PatchSpec
    members: tuple[PatchSpec, ...]
    offsets: tuple[tuple[int, int], ...]


def _offset(origin: PatchSpec, spec: PatchSpec) -> Optional[tuple[int, int]]:
    """(row, col) px of `spec`'s fetch origin on `origin`'s pixel grid, None off the grid (or
    for a rotated grid)."""
    a, b, c0, d, e, f0 = origin.fetch_transform
    if b or d:
        return None
    c, f = spec.fetch_transform[2], spec.fetch_transform[5]
    col, row = (c - c0) / a, (f - f0) / e
    if abs(col - round(col)) > OFFSET_TOLERANCE or abs(row - round(row)) > OFFSET_TOLERANCE:
        return None
    return round(row), round(col)


def union_window(specs: Sequence[PatchSpec]) -> Optional[MergedWindow]:
    """The union of `specs`' fetch windows (one pixel grid, `grid_key`), None if they are not
    on one grid. Its transform is that of the top-left member's grid moved by whole pixels."""
    first = specs[0]
    offsets = [_offset(first, s) for s in specs]
    if any(o is None for o in offsets):
        return None
    r0, c0 = min(o[0] for o in offsets), min(o[1] for o in offsets)
    r1 = max(o[0] for o in offsets) + first.fetch_height
    c1 = max(o[1] for o in offsets) + first.fetch_width
    top_left = min(range(len(specs)), key=lambda i: offsets[i])  # a member at the least row (then col)
    a, b, c, d, e, f = specs[top_left].fetch_transform
    tr, tc = offsets[top_left]
    # moved from a member's own origin, so a window of one patch is exactly that patch's grid
    transform = (a, b, c + (c0 - tc) * a, d, e, f + (r0 - tr) * e)
    window = PatchSpec(f"merged:{first.patch_id}+{len(specs) - 1}", first.region_id, first.crs, transform,
                       c1 - c0, r1 - r0, start=first.start, end=first.end)
    return MergedWindow(window, tuple(specs), tuple((r - r0, c - c0) for r, c in offsets))


def fits_one_request(window: PatchSpec, band_bytes: Sequence[int], limits: Optional[RequestLimits]) -> bool:
    return len(plan_parts(window.fetch_width, window.fetch_height, band_bytes, limits)) == 1


def plan_windows(specs: Sequence[PatchSpec], band_bytes: Sequence[int], limits: Optional[RequestLimits],
                 cap: int) -> list[MergedWindow | PatchSpec]:
    """`specs` (any order) as merged windows of at most `cap` patches and single patches (a
    PatchSpec), each patch in exactly one. A window holds one block's patches of one pixel
    grid, or one row of them, and fits one request; at most twice the pixels its patches need
    (sparse blocks are not padded out with pixels nobody asked for)."""
    if cap <= 1 or not specs:
        return list(specs)
    out: list[MergedWindow | PatchSpec] = []
    groups: dict[tuple, list[PatchSpec]] = {}
    for spec in specs:
        if not fits_one_request(spec, band_bytes, limits):  # a patch split into parts: its own requests
            out.append(spec)
            continue
        groups.setdefault((grid_key(spec), block_key(spec, cap)), []).append(spec)
    for members in groups.values():
        members.sort(key=lambda s: (s.row, s.col, s.patch_id))
        for chunk in [members[i:i + cap] for i in range(0, len(members), cap)]:
            out.extend(_windows(chunk, band_bytes, limits))
    return out


def _windows(members: list[PatchSpec], band_bytes, limits) -> list[MergedWindow | PatchSpec]:
    if len(members) == 1:
        return members
    window = union_window(members)
    if window is not None and _worth_it(window) and fits_one_request(window.spec, band_bytes, limits):
        return [window]
    rows: dict[int, list[PatchSpec]] = {}
    for spec in members:
        rows.setdefault(spec.row, []).append(spec)
    if len(rows) == 1:  # one row that does not fit (or is off the grid): patch by patch
        return list(members) if window is None or len(members) == 1 else _halves(members, band_bytes, limits)
    return [w for row in rows.values() for w in _windows(row, band_bytes, limits)]


def _halves(members: list[PatchSpec], band_bytes, limits) -> list[MergedWindow | PatchSpec]:
    half = len(members) // 2
    return _windows(members[:half], band_bytes, limits) + _windows(members[half:], band_bytes, limits)


def _worth_it(window: MergedWindow) -> bool:
    """At most twice the pixels of the members' own windows (overlaps counted once each)."""
    spec = window.spec
    own = len(window.members) * window.members[0].fetch_width * window.members[0].fetch_height
    return spec.fetch_width * spec.fetch_height <= 2 * own


def cut(data, mask, window: MergedWindow, index: int):
    """Member `index`'s (data, mask) from the window's `(C, H, W)` data and `(H, W)` mask."""
    member = window.members[index]
    r, c = window.offsets[index]
    rows, cols = slice(r, r + member.fetch_height), slice(c, c + member.fetch_width)
    return data[:, rows, cols].copy(), mask[rows, cols].copy()
