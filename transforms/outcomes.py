"""What became of each planned patch: manifest rows and patch filters. Pure, Beam-free.

Every planned patch ends as exactly one manifest row with status `written`, `filtered` (with a
reason) or `failed` (with the error), so the statuses add up to the plan.
"""

from __future__ import annotations

from typing import Optional, Sequence

from pixelbeam.transforms.planning.grid import bounds_to_lonlat
from pixelbeam.transforms.patch import FAILED, FILTERED, WRITTEN, FailedPatch, Patch, PatchSpec


def npy_relpath(patch_id: str) -> str:
    return f"npy/{patch_id}.npy"


def manifest_row(spec: PatchSpec, status: str, *, reason: Optional[str] = None, files: Sequence[str] = (),
                 patch: Optional[Patch] = None, attempts: Optional[int] = None) -> dict:
    """One manifest row: ids, lon/lat bounds (degrees), crs, transform, status and provenance."""
    row = {
        "patch_id": spec.patch_id,
        "region_id": spec.region_id,
        "status": status,
        "reason": reason,
        "bounds_lonlat": [round(v, 9) for v in bounds_to_lonlat(spec.crs, spec.bounds)],
        "crs": spec.crs,
        "transform": list(spec.transform),
        "width": spec.width,
        "height": spec.height,
        "margin": spec.margin,
        "files": list(files),
        "valid_fraction": None,
        "requests": 0,
        "attempts": attempts or 0,
        "bytes": 0,
    }
    if spec.label is not None:
        row["label"] = spec.label
    if spec.split is not None:  # every row (written, filtered, failed) when a split is configured
        row["split"] = spec.split
    if patch is not None:
        row.update(valid_fraction=plain_round(patch.valid_fraction), requests=patch.requests,
                   attempts=patch.requests + patch.retries, bytes=patch.bytes)
        if patch.times:
            row["times"] = list(patch.times)
        if patch.image_ids is not None:  # a collection: the images kept for this patch (filter_coverage)
            row.update(images=len(patch.image_ids), image_ids=list(patch.image_ids))
        if patch.more:  # layers: what each layer holds
            row["layers"] = {name: layer_summary(layer) for name, layer in patch.layers.items()}
    return row


def plain_round(fraction, digits: int = 6) -> float:
    """`round(fraction, digits)` (numpy's rounding for a numpy float, as the rows always had) as
    a Python float: a numpy scalar in a row made Beam pickle the whole row between stages."""
    return float(round(fraction, digits))


def layer_summary(layer) -> dict:
    """A layer's entry in a manifest row: its valid fraction, requests, bytes (and times, images)."""
    out = {"role": layer.role, "valid_fraction": plain_round(layer.valid_fraction), "requests": layer.requests,
           "bytes": layer.bytes}
    if layer.times:
        out["times"] = list(layer.times)
    if layer.image_ids is not None:
        out["image_ids"] = list(layer.image_ids)
    return out


def failed_row(failed: FailedPatch) -> dict:
    return manifest_row(failed.spec, FAILED, reason=f"{failed.stage}: {failed.error_class}: {failed.message}",
                        attempts=failed.attempts)


NO_VALID_PIXEL = "no valid pixel (output.keep_empty: true writes such patches)"


def filter_reason(patch: Patch, max_masked_ratio: float, keep_empty: bool = False) -> Optional[str]:
    """Why a fetched patch is not written, or None to keep it: a patch whose masked fraction is
    above `max_masked_ratio` (Earth Engine's maxMaskedRatio), and, unless `keep_empty`, a patch
    without a single valid pixel (whatever the ratio)."""
    valid = patch.valid_fraction
    if valid <= 0.0 and not keep_empty:
        return NO_VALID_PIXEL
    masked = 1.0 - valid
    if masked > max_masked_ratio:
        return f"masked ratio {masked:.4f} > max_masked_ratio {max_masked_ratio}"
    return None


def written_row(patch: Patch, files: Sequence[str]) -> dict:
    return manifest_row(patch.spec, WRITTEN, files=files, patch=patch)


def filtered_row(patch: Patch, reason: str) -> dict:
    return manifest_row(patch.spec, FILTERED, reason=reason, patch=patch)
