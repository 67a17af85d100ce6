"""Which patches a job holds: the global grid, coarse cells, regions, sampling, splits and the
staged plan. Pure (Beam only for its filesystems, in `staged`)."""
