"""GDAL remembers a failed remote open for the life of the process; pixelbeam forgets it when a
new reader opens (transforms/sources/remote.py). pyogrio's wheels map a second libgdal into the
process: the cache cleared must be rasterio's, wherever the two are mapped."""

import subprocess
import sys
import textwrap

import numpy as np
import rasterio
from rasterio.transform import from_origin

CHILD = textwrap.dedent("""
    import sys
    import rasterio
    import pyogrio  # its libgdal is mapped after rasterio's, at a lower address: listed first
    from pixelbeam.testing.cog_server import RangeFileServer
    from pixelbeam.transforms.sources.remote import forget_remote_files, gdal_http_options

    with RangeFileServer(sys.argv[1]) as server, rasterio.Env(**gdal_http_options(timeout_s=60)):
        url = f"/vsicurl/{server.url}/a.tif"
        server.fail("/a.tif", 403, 1000)
        try:
            rasterio.open(url)
            sys.exit("the refused open succeeded")
        except rasterio.errors.RasterioIOError:
            pass
        server._faults.clear()
        forget_remote_files()
        with rasterio.open(url) as ds:
            print(int(ds.read(1).sum()))
""")


def test_a_refused_open_is_forgotten_when_pyogrio_brought_its_own_gdal(tmp_path):
    with rasterio.open(tmp_path / "a.tif", "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8",
                       crs="EPSG:32618", transform=from_origin(0, 0, 10, 10)) as dst:
        dst.write(np.full((1, 4, 4), 3, np.uint8))
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "48"
