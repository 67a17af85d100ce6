"""Read TFRecord files of `tf.train.Example`s without TensorFlow: pure, Beam-free, numpy only.

The inverse of `pixelbeam.transforms.formats.encode`, for consumers that should not pay TensorFlow's import
(the preview pictures, the PyTorch TFRecord dataset). A TFRecord file is a sequence of

    uint64 length, uint32 masked CRC32C(length), byte data[length], uint32 masked CRC32C(data)

(little-endian), here GZIP-compressed as a whole. Both CRCs are checked (CRC32C through
`google_crc32c`, a core dependency). `parse_example` decodes the protobuf wire format of an
Example into `{name: value}`: a FloatList as a float32 array, an Int64List as an int64 array,
a BytesList as a list of bytes. Packed and unpacked repeated fields are both accepted, so
records written by TensorFlow or by Earth Engine read the same as pixelbeam's own.
"""

from __future__ import annotations

import gzip
import struct
from typing import BinaryIO, Iterator, Union

import google_crc32c
import numpy as np

__all__ = ["iter_records", "iter_examples", "parse_example", "frame_record", "RecordError"]

_MASK_DELTA = 0xA282EAD8


class RecordError(ValueError):
    """A TFRecord file or an Example that cannot be decoded (truncated, bad CRC, bad wire data)."""


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord record: length, masked CRC32C of the length, `data`, masked CRC32C of `data`."""
    length = struct.pack("<Q", len(data))
    return b"".join((length, struct.pack("<I", _masked_crc(length)), data, struct.pack("<I", _masked_crc(data))))


def _open(path: str) -> BinaryIO:
    """A local path or any path Beam's FileSystems can open (gs://...), as a binary stream."""
    if "://" in path:
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return open(path, "rb")


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes, fewer only at the end of the stream."""
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def iter_records(path: str, compression: Union[str, None] = "auto", check_crc: bool = True) -> Iterator[bytes]:
    """The records of one TFRecord file. `compression`: "GZIP", None, or "auto" (by the
    `.gz` suffix)."""
    if compression == "auto":
        compression = "GZIP" if path.endswith(".gz") else None
    raw = _open(path)
    stream: BinaryIO = gzip.GzipFile(fileobj=raw) if compression == "GZIP" else raw
    with raw, stream:
        while True:
            head = _read_exact(stream, 12)
            if not head:
                return
            if len(head) < 12:
                raise RecordError(f"{path}: truncated record header")
            (length,), (length_crc,) = struct.unpack("<Q", head[:8]), struct.unpack("<I", head[8:])
            if check_crc and _masked_crc(head[:8]) != length_crc:
                raise RecordError(f"{path}: bad length CRC; the file is corrupt")
            data = _read_exact(stream, length)
            tail = _read_exact(stream, 4)
            if len(data) < length or len(tail) < 4:
                raise RecordError(f"{path}: truncated record ({len(data)} of {length} bytes)")
            if check_crc and _masked_crc(data) != struct.unpack("<I", tail)[0]:
                raise RecordError(f"{path}: bad data CRC; the file is corrupt")
            yield data


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise RecordError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise RecordError("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a message: ints for varint/fixed, memoryviews for
    length-delimited fields."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise RecordError("truncated length-delimited field")
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        else:
            raise RecordError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def _decode_feature(buf: memoryview):
    for kind, _, payload in _fields(buf):
        if kind == 1:  # BytesList
            return [bytes(v) for n, _, v in _fields(payload) if n == 1]
        if kind == 2:  # FloatList: packed (wire 2) or one fixed32 (wire 5) per value
            parts = [np.frombuffer(v, "<f4") for n, _, v in _fields(payload) if n == 1]
            return np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if kind == 3:  # Int64List: packed varints (wire 2) or one varint (wire 0) per value
            values: list[int] = []
            for n, wire, v in _fields(payload):
                if n != 1:
                    continue
                if wire == 0:
                    values.append(_signed(v))
                else:
                    pos = 0
                    while pos < len(v):
                        u, pos = _varint(v, pos)
                        values.append(_signed(u))
            return np.array(values, dtype=np.int64)
    return []  # a Feature with no kind set


def parse_example(data: bytes) -> dict:
    """`{name: value}` of a serialized `tf.train.Example` (values flat; reshape with the
    feature spec in dataset.json)."""
    out: dict = {}
    for n, _, features in _fields(memoryview(data)):
        if n != 1:
            continue
        for m, _, entry in _fields(features):
            if m != 1:
                continue
            key, value = None, []
            for k, _, v in _fields(entry):
                if k == 1:
                    key = bytes(v).decode("utf-8")
                elif k == 2:
                    value = _decode_feature(v)
            if key is not None:
                out[key] = value
    return out


def iter_examples(paths, compression: Union[str, None] = "auto") -> Iterator[dict]:
    """Parsed Examples of every file in `paths`, file by file, in file order."""
    for path in paths:
        for record in iter_records(path, compression):
            yield parse_example(record)
