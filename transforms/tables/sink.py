"""Point-table rows to Arrow, and the sharded Parquet (`output.path/table/`) and CSV
(`output.path/table_csv/`) files.

Columns follow Earth Engine's `getRegion`: `id` (the image id), `longitude`, `latitude` (the
pixel centre, degrees), `time` (the image's start, ms since the Unix epoch, UTC; null when not
known), then `point_id` (which point or polygon the pixel belongs to) and one column per band in
the source's type, null where the pixel is masked in that image.

Files of run `<run>`: `table/part-<run>-SSSSS-of-NNNNN.parquet`, `table_csv/part-<...>.csv`
and, written last, `table/_groups-<run>-SSSSS-of-NNNNN.json` (the groups whose rows the shard
holds, its files and row count), which a rerun reads to skip groups done by a completed run
(pipeline/tables/resume.py). The `_` prefix keeps it out of pyarrow's dataset discovery, and the
CSV files have their own folder, so `pyarrow.parquet.read_table("OUT/table")` reads the table.
"""

from __future__ import annotations

import json
import zlib
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from pixelbeam.transforms.storage import join, write_atomically


def arrow_schema(bands: Sequence[str], dtype: str) -> pa.Schema:
    value_type = pa.from_numpy_dtype(np.dtype(dtype))
    return pa.schema([("id", pa.string()), ("longitude", pa.float64()), ("latitude", pa.float64()),
                      ("time", pa.int64()), ("point_id", pa.string())] + [(b, value_type) for b in bands])


def columns_to_table(columns: dict, bands: Sequence[str], dtype: str) -> pa.Table:
    """A group's columns (transforms/point_table.group_columns) as an Arrow table; masked -> null."""
    schema = arrow_schema(bands, dtype)
    masked = ~columns["valid"]
    arrays = [pa.array(columns["id"], pa.string()), pa.array(columns["longitude"], pa.float64()),
              pa.array(columns["latitude"], pa.float64()), pa.array(columns["time"], pa.int64()),
              pa.array(columns["point_id"], pa.string())]
    values = columns["values"].astype(dtype, copy=False)
    arrays += [pa.array(values[:, i], schema.field(b).type, mask=masked) for i, b in enumerate(bands)]
    return pa.Table.from_arrays(arrays, schema=schema)


def shard_of(key: str, shards: int) -> int:
    return zlib.crc32(key.encode()) % max(shards, 1)


SHARD_PREFIX = "table/part-"
GROUPS_PREFIX = "table/_groups-"
FOLDERS = {"parquet": "table", "csv": "table_csv"}  # a folder per format: `pq.read_table("OUT/table")` reads the table


def shard_name(shard: int, shards: int, ext: str, run_id: str = "") -> str:
    run = f"{run_id}-" if run_id else ""
    return f"{FOLDERS[ext]}/part-{run}{shard:05d}-of-{shards:05d}.{ext}"


def groups_name(shard: int, shards: int, run_id: str) -> str:
    """The record of the groups in one shard of run `run_id`."""
    return f"{GROUPS_PREFIX}{run_id}-{shard:05d}-of-{shards:05d}.json"


def write_shard(output_path: str, shard: int, shards: int, tables: Iterable[pa.Table], formats: Sequence[str],
                schema: pa.Schema, run_id: str = "", groups: Sequence[str] = ()) -> list[str]:
    """Writes one shard's rows in every format (atomically), then, with a `run_id`, the record
    of its `groups`; returns the shard files' relative paths."""
    tables = list(tables)
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    written = []
    for fmt in formats:
        buf = pa.BufferOutputStream()  # Arrow's memory, not a Python file (loaders/common.py arrow_buffer)
        if fmt == "parquet":
            import pyarrow.parquet as pq
            pq.write_table(table, buf, compression="zstd")
        else:
            import pyarrow.csv as pcsv
            pcsv.write_csv(table, buf)
        name = shard_name(shard, shards, "parquet" if fmt == "parquet" else "csv", run_id)
        write_atomically(join(output_path, name), buf.getvalue().to_pybytes())
        written.append(name)
    if run_id:
        record = {"run_id": run_id, "groups": sorted(groups), "rows": table.num_rows, "files": written}
        write_atomically(join(output_path, groups_name(shard, shards, run_id)), json.dumps(record).encode())
    return written
