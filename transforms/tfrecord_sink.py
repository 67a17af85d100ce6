"""WriteTFRecordShards: bytes (serialized `tf.train.Example`s) -> gzip TFRecord shards, through
Beam's file sink (temporary files renamed whole at the end, as `beam.io.WriteToTFRecord`), with
the gzip level chosen and each shard compressed on every core (transforms/formats/gzip_stream.py)
rather than on the pipeline's thread behind Beam's single zlib stream."""

from __future__ import annotations

from typing import Optional

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes

from pixelbeam.transforms.formats.gzip_stream import DEFAULT_LEVEL, GzipWriter  # noqa: F401 (DEFAULT_LEVEL: for sinks.py)
from pixelbeam.transforms.formats.records import frame_record


class _GzipTFRecordSink(filebasedsink.FileBasedSink):
    def __init__(self, file_path_prefix: str, file_name_suffix: str, num_shards: int, level: int,
                 threads: Optional[int]):
        super().__init__(file_path_prefix, coder=coders.BytesCoder(), file_name_suffix=file_name_suffix,
                         num_shards=num_shards, mime_type="application/octet-stream",
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self.level, self.threads = level, threads

    def open(self, temp_path):
        return GzipWriter(super().open(temp_path), self.level, self.threads)

    def write_encoded_record(self, file_handle, value):
        file_handle.write(frame_record(value))


class WriteTFRecordShards(beam.PTransform):
    """PCollection[bytes] -> gzip TFRecord files `<prefix>-SSSSS-of-NNNNN<suffix>` (`num_shards`
    0: the runner decides), gzip `level` 0..9, compressed on `threads` threads (None: the CPU count)."""

    def __init__(self, file_path_prefix: str, file_name_suffix: str = "", num_shards: int = 0,
                 level: int = DEFAULT_LEVEL, threads: Optional[int] = None):
        super().__init__()
        if not 0 <= level <= 9:
            raise ValueError(f"gzip level must be 0..9, got {level}")
        self._sink = _GzipTFRecordSink(file_path_prefix, file_name_suffix, num_shards, level, threads)

    def expand(self, records):
        return records | beam.io.Write(self._sink)
