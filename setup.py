"""pixelbeam: regions of the Earth -> fixed-size raster patches for ML, as an Apache Beam pipeline."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "pixelbeam", "version.py"), encoding="utf-8") as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read())[1]  # the one place it is written

CORE = [
    "apache-beam==2.77.*",
    "numpy>=1.26",
    "rasterio>=1.4",
    "shapely>=2.0",
    # vector files (regions, vector label layers) in any OGR format and CRS: GDAL's OGR through a
    # vectorized reader (one call returns every feature as WKB + numpy columns); better kept and
    # faster than fiona's feature-by-feature reads, and its wheels bundle GDAL
    "pyogrio>=0.10",
    "pyproj>=3.6",
    "pyyaml>=6.0",
    "rich>=13",  # the progress bar
    "pydantic>=2.6",
    "google-crc32c>=1.5",  # CRC32C for Beam's TFRecord sink
    "pillow>=10",  # preview.png
    "matplotlib>=3.8",  # footprints.png
]
GCP = ["apache-beam[gcp]==2.77.*", "google-cloud-storage>=2.14"]
EE = ["earthengine-api>=1.5", "google-auth>=2.0", "urllib3>=1.26"]  # ee_rest: the pixel requests' transport
TF = ["tensorflow-cpu>=2.16"]
# source.kind stac: pystac-client searches STAC APIs (paging, the query/filter extensions, CQL2
# text -> JSON through cql2), pystac reads static catalogs and ItemCollections, and cql2 evaluates
# query/filter on a static catalog's items the way an API would. `sign: planetary_computer`
# needs `planetary-computer` (optional, not installed here).
STAC = ["pystac>=1.10", "pystac-client>=0.8", "cql2>=0.3"]
# In Jupyter: rich draws the live progress bar as an ipywidgets widget, and Beam's Pipeline,
# run inside IPython, imports its interactive environment, which needs pandas (Beam's range).
NOTEBOOK = ["ipywidgets>=8", "pandas>=1.4.3,<2.4"]
# nbclient + ipykernel execute docs/notebook.ipynb in a real kernel (tests/test_notebook.py)
# webdataset: the real consumer of `formats: [webdataset]` tar shards, reads them back in tests
# (pixelbeam's own loader needs only the standard library's tarfile)
TEST = (["pytest>=8", "hypothesis>=6.100", "gcp-storage-emulator>=2024.8", "torch==2.13.0", "webdataset>=1.0",
         "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"] + GCP + EE + TF + NOTEBOOK + STAC)

# One import name, `pixelbeam`, while the design card's folders stay at the top of the
# repository: pixelbeam/ holds the public API (and pixelbeam.testing, the development servers),
# pipeline/ is installed as pixelbeam.pipeline and transforms/ as pixelbeam.transforms.
PACKAGE_DIRS = {"pixelbeam": "pixelbeam", "pixelbeam.pipeline": "pipeline", "pixelbeam.transforms": "transforms"}
PACKAGES = [f"{name}.{sub}" if sub else name
            for name, folder in PACKAGE_DIRS.items()
            for sub in [""] + find_packages(where=folder)]
# The demo rides along as in the repository, beside pipeline/: configs/ -> pixelbeam/configs,
# data/ -> pixelbeam/data (data folders, no code), so configs/demo.yaml's ../data/ paths hold
# and `pixelbeam demo` / `pixelbeam.demo_config()` run from an installed wheel.
DATA_DIRS = {"pixelbeam.configs": "configs", "pixelbeam.data": "data"}
PACKAGE_DATA = {"pixelbeam": ["py.typed"], "": ["*.json"],
                "pixelbeam.configs": ["*.yaml", "*.json", "*.geojson"],
                "pixelbeam.data": ["README.md", "RGB.byte.tif", "regions.geojson"]}

setup(
    name="pixelbeam",
    version=VERSION,
    description=__doc__,
    python_requires=">=3.11",
    packages=PACKAGES + list(DATA_DIRS),
    package_dir={**PACKAGE_DIRS, **DATA_DIRS},
    package_data=PACKAGE_DATA,
    install_requires=CORE,
    extras_require={"gcp": GCP, "ee": EE, "tf": TF, "notebook": NOTEBOOK, "stac": STAC, "test": TEST},
    entry_points={"console_scripts": ["pixelbeam=pixelbeam.pipeline.cli:main"]},
)
