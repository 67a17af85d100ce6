"""Development servers for tests and benchmarks (not needed to run a job): a local Earth
Engine REST emulator (`pixelbeam.testing.ee_emulator`, also `pixelbeam emulate`)."""
