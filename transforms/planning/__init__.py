"""Which patches a job holds: the global grid, coarse cells, regions, sampling and the staged
plan. Pure (Beam only for its filesystems, in `staged`)."""
