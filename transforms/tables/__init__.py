"""Point time series, the core: which pixels a table holds and how they are grouped
(`points`), and rows to Arrow, Parquet and CSV shards (`sink`)."""
