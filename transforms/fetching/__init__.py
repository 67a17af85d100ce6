"""The request machinery under `FetchPatches`: request sizing against the server's limits,
throttling (concurrency, rate, adaptive), classified retries, the request runner and progress
files. Pure and Beam-free."""
