"""transforms/formats/gzip_stream.py: one gzip member compressed in chunks on threads, read back
by Python's gzip and by TensorFlow's TFRecord reader; the sink's shards as TensorFlow reads them."""

import gzip
import io
import os
import zlib

import numpy as np
import pytest

from pixelbeam.transforms.formats.gzip_stream import GzipWriter
from pixelbeam.transforms.formats.records import frame_record, iter_records


def pieces(n=40, seed=3):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4, size=int(rng.integers(0, 90_000)), dtype=np.uint8).tobytes() for _ in range(n)]


@pytest.mark.parametrize("threads,chunk", [(1, 1 << 20), (2, 50_000), (4, 7_000)])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_chunks_on_threads_make_one_gzip_member_of_the_same_bytes(threads, chunk, level):
    data = pieces()
    buf = io.BytesIO()
    with GzipWriter(buf, level=level, threads=threads, chunk_bytes=chunk, close_raw=False) as w:
        for piece in data:
            w.write(piece)
    out = buf.getvalue()
    assert gzip.decompress(out) == b"".join(data)
    # one member: zlib's gzip decoder stops at the end of the first member with nothing left over
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert d.decompress(out) == b"".join(data) and d.eof and d.unused_data == b""


def test_same_bytes_whatever_the_threads_and_a_smaller_file_at_a_higher_level():
    data = b"".join(pieces())

    def gz(level, threads):
        buf = io.BytesIO()
        with GzipWriter(buf, level=level, threads=threads, chunk_bytes=100_000, close_raw=False) as w:
            w.write(data)
        return buf.getvalue()
    assert gz(1, 1) == gz(1, 3)  # the threads change when, not what
    assert len(gz(9, 2)) < len(gz(1, 2)) < len(data)
    with pytest.raises(ValueError, match="0..9"):
        GzipWriter(io.BytesIO(), level=10)


def test_empty_file_is_a_valid_gzip():
    buf = io.BytesIO()
    GzipWriter(buf, close_raw=False).close()
    assert gzip.decompress(buf.getvalue()) == b""


def test_tensorflow_reads_the_records_of_a_chunked_file(tmp_path):
    tf = pytest.importorskip("tensorflow")
    records = pieces(30)
    path = str(tmp_path / "x.tfrecord.gz")
    with GzipWriter(open(path, "wb"), level=1, threads=2, chunk_bytes=20_000) as w:
        for r in records:
            w.write(frame_record(r))
    assert [r.numpy() for r in tf.data.TFRecordDataset([path], compression_type="GZIP")] == records
    assert list(iter_records(path)) == records
    assert os.path.getsize(path) < sum(map(len, records))
