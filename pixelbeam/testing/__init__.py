"""Development servers for tests and benchmarks (not needed to run a job): a local Earth
Engine REST emulator (`pixelbeam.testing.ee_emulator`, also `pixelbeam emulate`), a local STAC
API (`stac_server`, also `python -m pixelbeam.testing.stac_server`), a file server with Range
requests (`cog_server`), and pixelbeam's demo STAC catalog made from the bundled scene
(`stac_catalog`)."""
