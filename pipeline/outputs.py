"""The per-patch output options of a job (NPY layout, GeoTIFF, PNG/JPEG visualization), checked
against the source when the job is planned and handed to `WritePatches`."""

from __future__ import annotations

from typing import Optional

from pixelbeam.pipeline.config import ConfigError, OutputConfig
from pixelbeam.transforms.formats.files import VISUAL_FORMATS, PatchFileOptions, per_patch_formats
from pixelbeam.transforms.sources.base import SourceInfo
from pixelbeam.transforms.formats.visualize import VisParams, VisualizationError, resolve_vis


def resolve_visualization(output: OutputConfig, info: SourceInfo) -> Optional[VisParams]:
    """The visualization for png/jpeg, its bands checked against the source's; None when the
    job writes no picture. Raises a one-line ConfigError."""
    if not set(VISUAL_FORMATS) & set(output.formats):
        return None
    vis = output.visualization
    try:
        if vis is None:
            return resolve_vis(info.band_names, info.dtype)
        return resolve_vis(info.band_names, info.dtype, bands=vis.bands, min=vis.min, max=vis.max,
                           gamma=vis.gamma, palette=vis.palette)
    except VisualizationError as e:
        raise ConfigError(str(e)) from None


def check_outputs(output: OutputConfig, info: SourceInfo) -> None:
    """Plan-time checks of the output options that need the source (visualization bands)."""
    resolve_visualization(output, info)


def patch_file_options(output: OutputConfig, info: SourceInfo, mask_npy: bool = False) -> PatchFileOptions:
    """What `WritePatches` writes per patch, from the validated output section (`info`: the
    output's bands and dtype); `mask_npy` adds npy/<patch_id>.mask.npy beside each NPY."""
    return PatchFileOptions(formats=per_patch_formats(output.formats), bands_axis=output.bands_axis,
                            vis=resolve_visualization(output, info), mask_npy=mask_npy and "npy" in output.formats)
