"""Adding output formats to a finished output: a rerun whose config differs from the recorded one
only by formats added to `output.formats` (and the options of those formats) writes the new
formats for every written patch from its stored NPY files, without fetching pixels.

The launcher decides here whether the change is such an addition (`added_formats`) and whether
the stored patches can give the new formats (`why_not_from_stored`: a one-line reason, e.g. no
NPY was written); the workers then restore each written patch whose manifest row lacks a format
(transforms/skip_done.py, transforms/restore.py) and `WritePatches` writes it as it writes a
fetched patch. Its new manifest row lists every file and the real shards holding its records:
the TFRecord shards of the run that wrote its example (or this run's, for an added tfrecord),
the WebDataset shard likewise.
"""

from __future__ import annotations

from typing import Optional

from pixelbeam.pipeline.outputs import job_file_options
from pixelbeam.transforms.formats.stored import StoredLayout

# Output keys that change nothing already written when the formats they concern are new.
OPTIONS_OF = {"output.visualization": ("png", "jpeg"), "output.tfrecord_compression_level": ("tfrecord",)}


def added_formats(changed: list[str], recorded: Optional[dict], config) -> list[str]:
    """The formats `config` adds to the recorded config when that (and the options of the added
    formats: `OPTIONS_OF`) is the only change among the decisive `changed` keys, else []."""
    old = ((recorded or {}).get("output") or {}).get("formats")
    new = list(config.output.formats)
    if not isinstance(old, list) or "output.formats" not in changed or not set(old) < set(new):
        return []
    added = [f for f in new if f not in old]
    for key in changed:
        if key == "output.formats":
            continue
        option = next((k for k in OPTIONS_OF if key == k or key.startswith(k + ".")), None)
        if option is None or set(OPTIONS_OF[option]) & set(old):
            return []
    return added


def why_not_from_stored(added: list[str], recorded: dict, config) -> Optional[str]:
    """Why the `added` formats cannot be written from the stored patches (one line for the
    refusal), or None when they can."""
    old = recorded["output"]["formats"]
    if "npy" not in old:
        return (f"the added {' and '.join(added)} would be written from the stored NPY patches, but formats "
                f"{old} stored none, so every patch would be fetched again")
    if getattr(config, "layers", None):
        return (f"pixelbeam does not yet write an added format ({', '.join(added)}) from stored patches of "
                "several layers, so every patch would be fetched again")
    return None


def stored_layout(job) -> Optional[StoredLayout]:
    """What every written patch of `job` must have and how its stored NPY files read back (one
    source; None with layers, which `why_not_from_stored` refuses)."""
    if job.layered:
        return None
    out = job.config.output
    return StoredLayout(templates=job_file_options(job).templates, tfrecord="tfrecord" in out.formats,
                        webdataset="webdataset" in out.formats, band_names=tuple(job.output_info.band_names),
                        bands_axis=out.bands_axis)
