"""Point time-series jobs (a `table:` section): the plan (which images, pixels and groups),
the Beam graph, resume and the run. The pure core is `pixelbeam.transforms.tables`."""
