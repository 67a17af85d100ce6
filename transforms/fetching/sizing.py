"""Request sizing: split one patch into requests that each fit the server's limits. Pure.

Earth Engine rejects (HTTP 400) a pixel request over 48 MiB (width x height x bytes of all
requested bands), over 32,768 px on a side, or over 1,024 bands. A patch that does not fit is
split into band groups first (cheap to reassemble, and each group is still a whole window),
then each band group into row strips, then column tiles.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

EE_MAX_BYTES = 48 * 1024 * 1024  # 50,331,648 bytes
EE_MAX_SIDE = 32768  # pixels
EE_MAX_BANDS = 1024
MAX_PARTS_PER_PATCH = 4096  # past this a patch is a misconfiguration, not a patch


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """Server limits for one request: bytes, pixels per side, band count."""

    max_bytes: int = EE_MAX_BYTES
    max_side: int = EE_MAX_SIDE
    max_bands: int = EE_MAX_BANDS


@dataclasses.dataclass(frozen=True)
class RequestPart:
    """One request of a patch: band indices (0-based, into the patch's bands) and a window
    (pixels, relative to the patch's fetch window)."""

    bands: tuple[int, ...]
    row_off: int
    col_off: int
    height: int
    width: int
    image: Optional[int] = None  # a collection's image (transforms/pixels/collections.py), else the source's one image


class RequestTooLarge(ValueError):
    """A patch that cannot be split into requests that fit the limits."""


def request_bytes(width: int, height: int, band_bytes: Sequence[int]) -> int:
    """Bytes of one request: width x height x the sum of the bands' bytes per pixel."""
    return width * height * sum(band_bytes)


def plan_parts(width: int, height: int, band_bytes: Sequence[int], limits: RequestLimits | None) -> list[RequestPart]:
    """Requests covering a `width` x `height` window of all bands; one when it fits."""
    bands = tuple(range(len(band_bytes)))
    if limits is None:
        return [RequestPart(bands, 0, 0, height, width)]
    if max(band_bytes, default=0) > limits.max_bytes:
        raise RequestTooLarge(f"one pixel of one band is over {limits.max_bytes} bytes")
    groups = _band_groups(band_bytes, width * height, limits)
    parts = []
    for group in groups:
        px_bytes = sum(band_bytes[b] for b in group)
        rows = min(height, limits.max_side, max(1, limits.max_bytes // (px_bytes * min(width, limits.max_side))))
        cols = min(width, limits.max_side, max(1, limits.max_bytes // (px_bytes * rows)))
        for r in range(0, height, rows):
            for c in range(0, width, cols):
                parts.append(RequestPart(group, r, c, min(rows, height - r), min(cols, width - c)))
    if len(parts) > MAX_PARTS_PER_PATCH:
        raise RequestTooLarge(
            f"a {width}x{height} px patch of {len(band_bytes)} bands needs {len(parts)} requests "
            f"(limit {MAX_PARTS_PER_PATCH}); use a smaller patch_size or fewer bands")
    return parts


def _band_groups(band_bytes: Sequence[int], pixels: int, limits: RequestLimits) -> list[tuple[int, ...]]:
    """Consecutive band groups of at most `max_bands` bands, each fitting the byte limit for
    the whole window when possible (otherwise single bands, split by window later)."""
    groups, current, current_bytes = [], [], 0
    for b, nbytes in enumerate(band_bytes):
        fits = current_bytes + nbytes <= max(limits.max_bytes // max(pixels, 1), 1)
        if current and (len(current) >= limits.max_bands or not fits):
            groups.append(tuple(current))
            current, current_bytes = [], 0
        current.append(b)
        current_bytes += nbytes
    if current:
        groups.append(tuple(current))
    return groups


def parts_summary(width: int, height: int, band_bytes: Sequence[int], limits: RequestLimits | None) -> tuple[int, int]:
    """(requests, bytes) for one patch."""
    parts = plan_parts(width, height, band_bytes, limits)
    return len(parts), request_bytes(width, height, band_bytes)
