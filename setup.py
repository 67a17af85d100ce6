"""pixelbeam: regions of the Earth -> fixed-size raster patches for ML, as an Apache Beam pipeline."""

from setuptools import find_packages, setup

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
EE = ["earthengine-api>=1.5"]
TF = ["tensorflow-cpu>=2.16"]
TEST = ["pytest>=8", "hypothesis>=6.100", "gcp-storage-emulator>=2024.8", "torch==2.13.0"] + GCP + EE + TF

# One import name, `pixelbeam`, while the design card's folders stay at the top of the
# repository: pixelbeam/ holds the public API (and pixelbeam.testing, the development servers),
# pipeline/ is installed as pixelbeam.pipeline and transforms/ as pixelbeam.transforms.
PACKAGE_DIRS = {"pixelbeam": "pixelbeam", "pixelbeam.pipeline": "pipeline", "pixelbeam.transforms": "transforms"}
PACKAGES = [f"{name}.{sub}" if sub else name
            for name, folder in PACKAGE_DIRS.items()
            for sub in [""] + find_packages(where=folder)]

setup(
    name="pixelbeam",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=PACKAGES,
    package_dir=PACKAGE_DIRS,
    package_data={"pixelbeam": ["py.typed"], "": ["*.json"]},
    install_requires=CORE,
    extras_require={"gcp": GCP, "ee": EE, "tf": TF, "test": TEST},
    entry_points={"console_scripts": ["pixelbeam=pixelbeam.pipeline.cli:main"]},
)
