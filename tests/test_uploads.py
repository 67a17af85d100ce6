"""transforms/uploads.py: a bounded pool of uploads hands each item back once all its files are
written, with the first error of any of them, and never holds more than `max_pending` items."""

import threading

from pixelbeam.transforms.uploads import UploadPool


def test_items_come_back_in_order_with_their_errors_and_the_queue_stays_bounded():
    written, lock = [], threading.Lock()

    def write(path, data):
        if path.endswith("bad"):
            raise OSError(f"{path}: disk full")
        with lock:
            written.append((path, data))

    pool = UploadPool(threads=3, max_pending=4, write=write)
    finished = []
    for i in range(20):
        files = [(f"p{i}/a", b"x"), (f"p{i}/{'bad' if i == 7 else 'b'}", b"y")]
        finished += pool.submit(i, files)
        assert len(pool.pending) <= 4
    finished += pool.drain()
    pool.close()
    assert [item for item, _ in finished] == list(range(20))
    errors = {item: str(e) for item, e in finished if e is not None}
    assert errors == {7: "p7/bad: disk full"}
    assert len(written) == 39 and not pool.pending
