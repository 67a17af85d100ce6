"""pixelbeam: regions of the Earth -> fixed-size raster patches for machine learning, as an
Apache Beam pipeline.

The public API (README, "Python API"); importing `pixelbeam` imports none of Beam, TensorFlow or torch:
each name is loaded on first use.

- `run(config, *, beam_args=(), overwrite=False, max_failed_fraction=0.0) -> RunResult`: what
  `pixelbeam run` does; `plan(config) -> Plan`: what `pixelbeam plan` prints, and the planned
  patches; `open_output(path) -> Output`: dataset.json and the manifest of a finished run.
  A config is a YAML path, a dict with the YAML's shape or a `Config`.
- `demo_config(output_path)`: the bundled demo as a config dict.
- The loaders: `NpyPatchDataset`, `TFRecordPatchDataset`, `WebDatasetPatchDataset` (PyTorch), `tf_dataset` (tf.data).
- `ConfigError`: bad input, one line naming the field (`.field`) and what to do.
- `pixelbeam.beam`: the building blocks (TilePatches, FetchPatches, WritePatches, WriteReports,
  sources) for one's own Beam pipeline (docs/beam.md).

`pixelbeam.pipeline` is the application (CLI, config, planning, graph), `pixelbeam.transforms`
the Beam building blocks over a Beam-free core, `pixelbeam.testing` the development servers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pixelbeam.version import __version__

if TYPE_CHECKING:  # what the lazy names below are, for type checkers (py.typed)
    from pixelbeam.pipeline.api import Output, Plan, demo_config, open_output, plan, run
    from pixelbeam.pipeline.config import Config, ConfigError
    from pixelbeam.pipeline.results import Requests, RunResult
    from pixelbeam.transforms.loaders import NpyPatchDataset, TFRecordPatchDataset, WebDatasetPatchDataset, tf_dataset

_API = ("run", "plan", "open_output", "demo_config", "Plan", "Output")
_CONFIG = ("Config", "ConfigError")
_RESULTS = ("RunResult", "Requests")
_LOADERS = ("NpyPatchDataset", "TFRecordPatchDataset", "WebDatasetPatchDataset", "tf_dataset")

__all__ = ["__version__", *_API, *_CONFIG, *_RESULTS, *_LOADERS]


def __getattr__(name: str) -> Any:
    """Each public name is imported when first used (`import pixelbeam` stays fast)."""
    if name == "beam":  # the submodule, on first use as an attribute
        import pixelbeam.beam
        return pixelbeam.beam
    if name in _API:
        from pixelbeam.pipeline import api as module
    elif name in _CONFIG:
        from pixelbeam.pipeline import config as module
    elif name in _RESULTS:
        from pixelbeam.pipeline import results as module
    elif name in _LOADERS:
        from pixelbeam.transforms import loaders as module
    else:
        raise AttributeError(f"module 'pixelbeam' has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # later uses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
