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


def patch_file_options(output: OutputConfig, info: SourceInfo, mask_npy: bool = False,
                       layers: tuple[str, ...] = (), picture_layer: str = "") -> PatchFileOptions:
    """What `WritePatches` writes per patch, from the validated output section (`info`: the
    output's bands and dtype, of `picture_layer` with layers); `mask_npy` adds
    npy/<patch_id>.mask.npy beside each NPY; `layers` names the layers of a `layers:` job (each
    written to its own folder)."""
    return PatchFileOptions(formats=per_patch_formats(output.formats), bands_axis=output.bands_axis,
                            vis=resolve_visualization(output, info), mask_npy=mask_npy and "npy" in output.formats,
                            layers=tuple(layers), picture_layer=picture_layer)


def job_file_options(job) -> PatchFileOptions:
    """`patch_file_options` of a planned job (one source, or its layers)."""
    out = job.config.output
    if not job.layered:
        return patch_file_options(out, job.output_info, mask_npy=job.config.mask.npy)
    shown = job.picture_layer
    return patch_file_options(out, shown.output_info, mask_npy=job.config.mask.npy,
                              layers=tuple(layer.name for layer in job.layers), picture_layer=shown.name)
