"""pixelbeam: regions of the Earth -> fixed-size raster patches for machine learning, as an
Apache Beam pipeline.

`pixelbeam.pipeline` is the application (CLI, config, planning, graph), `pixelbeam.transforms`
the Beam building blocks over a Beam-free core, `pixelbeam.testing` the development servers.
"""

__version__ = "0.1.0"
