"""Beam building blocks (installed as `pixelbeam.transforms`).

The PTransforms are the modules at this level (`tiling.TilePatches`, `skip_done.SkipDonePatches`,
`fetch.FetchPatches`, `sinks.WritePatches` / `WriteReports`, `statistics.PatchStatistics`), thin
wiring over a Beam-free core in the rooms below: `planning` (grid, cells, regions, sampling,
splits, staged plans), `pixels` (masks, scaling, collections, resampling, statistics), `fetching` (throttle, retry, request runner, sizing,
progress), `sources` (raster files, Earth Engine, point-table stacks), `formats` (TFRecord/NPY
encoding, GeoTIFF, pictures, per-patch files), `tables` (point time series), `loaders`
(TensorFlow and PyTorch), plus the data model (`patch`, `outcomes`) and `storage`.
Importing this package imports nothing: the core stays usable without Beam.
"""
