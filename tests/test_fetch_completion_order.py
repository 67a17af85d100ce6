"""FetchDoFn emits patches as they complete: one slow patch (e.g. in retry backoff) must not
hold back the patches behind it (benchmarks/ee_throughput.py measured that as lost throughput)."""

import threading

import numpy as np

from pixelbeam.transforms.fetch import FetchDoFn, FetchSettings
from pixelbeam.transforms.planning.grid import GridSpec, make_spec
from pixelbeam.transforms.sources.base import PartResult, SourceInfo

RELEASE = threading.Event()  # module-level: the DoFn's Shared worker holds a reader per process


class SlowFirstSource:
    def __init__(self, info):
        self.info = info

    def open(self, info=None):
        return self

    def fetch(self, spec, part):
        if spec.col == 0:
            RELEASE.wait(5)  # the old FIFO DoFn would block on this patch before emitting any other
        data = np.full((len(part.bands), part.height, part.width), spec.col, dtype=np.uint8)
        return PartResult(data=data, mask=np.ones((part.height, part.width), bool), nbytes=data.nbytes)

    def close(self):
        pass


def test_a_slow_patch_does_not_hold_back_the_others():
    RELEASE.clear()
    info = SourceInfo(band_names=("a",), dtypes=("uint8",))
    grid = GridSpec("EPSG:32618", (10.0, 10.0), patch_size=(4, 4))
    dofn = FetchDoFn(SlowFirstSource(info), info, FetchSettings(max_concurrent=2, max_requests_per_second=1000,
                                                                threads=2))
    dofn.setup()
    dofn.start_bundle()
    emitted = []
    for col in range(10):
        emitted += [patch.spec.col for patch in dofn.process(make_spec(grid, "EPSG:32618", 0, col, "r"))]
    assert 0 not in emitted and len(emitted) >= 6  # at most 2 x threads pending, the slow one among them
    RELEASE.set()
    emitted += [wv.value.spec.col for wv in dofn.finish_bundle()]
    assert sorted(emitted) == list(range(10))
