"""The application (installed as `pixelbeam.pipeline`): CLI, config schema and validation,
planning, the Beam graph, runs and resume, the summary, pictures and Dataflow options.
Point tables have their own plan/graph/resume/run in `pixelbeam.pipeline.tables`."""
