"""Vector pixel source: features of a vector file rasterized onto each patch's grid. Beam-free.

A `VectorSource` is described once on the launcher (the file is read, its attribute and class
values checked, the burnt dtype chosen) and opened once per worker process (`open`, in
`DoFn.setup`): the reader reads the file again, then per patch CRS reprojects the features
once and indexes them in a shapely STRtree, so a patch rasterizes only the features that
touch its window. Pixels are `rasterio.features.rasterize` of `(geometry, value)` pairs on the
patch's fetch transform (margin included), in burn order (later features drawn over earlier):

- `file`: the file's order; `area`: largest first, so small features stay on top (area in the
  file's CRS units); a property: ascending by its value (`descending` for the reverse).
- Pixels no feature covers take `background`. With `ignore_value`, pixels within
  `ignore_buffer` px of a polygon's edge (its boundary buffered by that distance; lines and
  points have no edge) take it, burnt last; pixels holding `ignore_value` are masked (so a
  `background` equal to it masks unlabelled pixels too).
- `all_touched` burns every pixel a feature touches rather than those whose centre it covers.

No request is sent; the reader's `limits` are None, and the fetch layer calls it directly.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Optional

import numpy as np
import shapely
from affine import Affine

from pixelbeam.transforms.fetching.sizing import RequestPart
from pixelbeam.transforms.formats.vector_files import VectorFileError, VectorTable, is_lonlat, read_vector, to_crs
from pixelbeam.transforms.patch import PatchSpec
from pixelbeam.transforms.sources.base import PartResult, SourceError, SourceInfo

log = logging.getLogger(__name__)

BURN_ORDERS = ("file", "area", "property")
# Burnt types tried in order: the first that holds every value (background and ignore_value too).
AUTO_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")
AREAL_TYPE_IDS = (3, 6)  # shapely type ids of Polygon and MultiPolygon


@dataclasses.dataclass(frozen=True)
class VectorSource:
    """The features of `path` (`layer` of a multi-layer file) burnt with the value of their
    `property` (through `classes`, name -> value, when given) into one band named `band`."""

    path: str
    property: str
    band: str
    layer: Optional[str] = None
    classes: Optional[tuple[tuple[str, int], ...]] = None
    all_touched: bool = False
    background: float = 0
    ignore_value: Optional[float] = None
    ignore_buffer: int = 0  # px
    burn_order: str = "file"  # file | area | property
    burn_property: Optional[str] = None
    descending: bool = False
    dtype: Optional[str] = None  # numpy name; None: the smallest of AUTO_DTYPES that holds every value
    where: str = "layer"  # the config field, for messages (e.g. layers.labels)

    def read(self) -> VectorTable:
        columns = [c for c in (self.property, self.burn_property) if c]
        try:
            table = read_vector(self.path, self.layer, where=f"{self.where}.path")
        except VectorFileError as e:
            raise SourceError(str(e)) from None
        for field, name in ((f"{self.where}.property", self.property),
                            (f"{self.where}.burn_order.property", self.burn_property)):
            if name and name not in table.columns:
                known = ", ".join(table.columns) or "none"
                raise SourceError(f"{field}: {name!r} is not an attribute of {self.path!r} (its attributes: "
                                  f"{known}); name one of them")
        if table.crs is None:
            raise SourceError(f"{self.where}.path: {self.path!r} declares no CRS; give it one "
                              "(e.g. ogr2ogr -a_srs EPSG:4326)")
        return dataclasses.replace(table, columns={c: table.columns[c] for c in columns})

    def values(self, table: VectorTable) -> np.ndarray:
        """The value burnt for each feature (float64); SourceError names a feature without one."""
        raw = table.columns[self.property]
        classes = dict(self.classes) if self.classes is not None else None
        out = np.empty(len(raw), dtype=np.float64)
        for i, value in enumerate(raw):
            value = value.item() if isinstance(value, np.generic) else value
            if value is None or (isinstance(value, float) and value != value):
                raise SourceError(f"{self.where}.property: feature {i} of {self.path!r} has no {self.property!r}; "
                                  "give every feature a value (or remove it)")
            if classes is not None:
                if str(value) not in classes:
                    raise SourceError(f"{self.where}.classes: feature {i} has {self.property} {value!r}, which is "
                                      f"not among the classes ({', '.join(classes)}); add it to classes")
                out[i] = classes[str(value)]
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[i] = value
            else:
                raise SourceError(f"{self.where}.property: feature {i} has {self.property} {value!r}, not a number; "
                                  "give classes: {name: value, ...} to burn class names")
        return out

    def burn_rank(self, table: VectorTable) -> np.ndarray:
        """Each feature's place in the burn order (0 burnt first)."""
        n = len(table)
        if self.burn_order == "area":
            areas = np.nan_to_num(shapely.area(table.geometries), nan=0.0)
            order = np.argsort(-areas, kind="stable")
        elif self.burn_order == "property":
            try:
                key = np.asarray(table.columns[self.burn_property], dtype=np.float64)
            except (TypeError, ValueError):
                raise SourceError(f"{self.where}.burn_order.property: {self.burn_property!r} must be a number on "
                                  "every feature") from None
            order = np.argsort(-key if self.descending else key, kind="stable")
        else:
            order = np.arange(n)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        return rank

    def burnt_dtype(self, values: np.ndarray) -> str:
        everything = np.concatenate([values, [self.background] + ([self.ignore_value] if self.ignore_value is not None
                                                                   else [])])
        if self.dtype:
            dt = np.dtype(self.dtype)
            if dt.kind in "iu" and (np.any(everything != np.round(everything)) or everything.min() < np.iinfo(dt).min
                                    or everything.max() > np.iinfo(dt).max):
                raise SourceError(f"{self.where}.data_type: {dt.name} cannot hold the values "
                                  f"{everything.min():g}..{everything.max():g}; choose a wider type")
            return dt.name
        for name in AUTO_DTYPES:
            dt = np.dtype(name)
            if dt.kind == "f" or (np.all(everything == np.round(everything)) and np.iinfo(dt).min <= everything.min()
                                  and everything.max() <= np.iinfo(dt).max):
                return name
        return "float64"

    def describe(self) -> SourceInfo:
        table = self.read()
        dtype = self.burnt_dtype(self.values(table))
        self.burn_rank(table)
        present = table.geometries[~shapely.is_missing(table.geometries)]
        footprint = None
        if present.size:
            lonlat = present if is_lonlat(table.crs) else to_crs(present, table.crs, "EPSG:4326")
            footprint = tuple(float(v) for v in shapely.total_bounds(lonlat))
        return SourceInfo(band_names=(self.band,), dtypes=(dtype,), footprint_lonlat=footprint)

    def open(self, info: Optional[SourceInfo] = None) -> "VectorReader":
        return VectorReader(self, info or self.describe())


@dataclasses.dataclass
class _Index:
    """The features reprojected to one CRS, indexed: `geometries[i]` burns `values[i]`."""

    tree: shapely.STRtree
    geometries: np.ndarray
    values: np.ndarray
    rank: np.ndarray


class VectorReader:
    """Rasterizes patch windows; one per worker process, shared by its threads."""

    limits = None  # no request to split

    def __init__(self, source: VectorSource, info: SourceInfo):
        self.source, self.info = source, info
        self.dtype = np.dtype(info.dtypes[0])
        table = source.read()
        keep = ~shapely.is_missing(table.geometries) & ~shapely.is_empty(table.geometries)
        if not keep.all():
            log.warning("%s: %d features of %s have no geometry; skipped", source.where, int((~keep).sum()), source.path)
        self.crs = table.crs
        self.geometries = table.geometries[keep]
        self.values = source.values(table)[keep]
        self.rank = source.burn_rank(table)[keep]
        self._indexes: dict[str, _Index] = {}
        self._lock = threading.Lock()

    def index(self, crs: str) -> _Index:
        """The features in `crs`, reprojected and indexed on first use."""
        with self._lock:
            if crs not in self._indexes:
                geometries = to_crs(self.geometries, self.crs, crs)
                self._indexes[crs] = _Index(shapely.STRtree(geometries), geometries, self.values, self.rank)
            return self._indexes[crs]

    def fetch(self, spec: PatchSpec, part: RequestPart) -> PartResult:
        transform = Affine(*spec.fetch_transform) * Affine.translation(part.col_off, part.row_off)
        data = rasterize_window(self.index(spec.crs), transform, part.width, part.height, self.source, self.dtype)
        ignore = self.source.ignore_value
        mask = np.ones(data.shape, dtype=bool) if ignore is None else data != np.asarray(ignore).astype(self.dtype)
        return PartResult(data=data[None], mask=mask, nbytes=0)

    def close(self) -> None:
        pass


def window_box(transform: Affine, width: int, height: int, grow: float = 0.0):
    """The window's footprint in CRS units (its corners' bounding box), grown by `grow`."""
    corners = [transform * (c, r) for c in (0, width) for r in (0, height)]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    return shapely.box(min(xs) - grow, min(ys) - grow, max(xs) + grow, max(ys) + grow)


def rasterize_window(index: _Index, transform: Affine, width: int, height: int, source: VectorSource,
                     dtype: np.dtype) -> np.ndarray:
    """(height, width) of `dtype`: the features touching the window burnt in order (module doc)."""
    from rasterio.features import rasterize
    pixel = max(abs(transform.a), abs(transform.e), abs(transform.b), abs(transform.d))
    edge = source.ignore_buffer * pixel if source.ignore_value is not None else 0.0
    hits = index.tree.query(window_box(transform, width, height, grow=edge), predicate="intersects")
    hits = hits[np.argsort(index.rank[hits], kind="stable")]
    out = np.full((height, width), np.asarray(source.background).astype(dtype), dtype=dtype)
    if hits.size:
        shapes = [(g, v) for g, v in zip(index.geometries[hits], index.values[hits])]
        rasterize(shapes, out=out, transform=transform, all_touched=source.all_touched)
    if hits.size and edge > 0:  # polygons' edges only: lines and points have no edge to be unsure of
        geometries = index.geometries[hits]
        geometries = geometries[np.isin(shapely.get_type_id(geometries), AREAL_TYPE_IDS)]
        edges = shapely.buffer(shapely.boundary(geometries), edge)
        shapes = [(g, source.ignore_value) for g in edges if not g.is_empty]
        if shapes:
            rasterize(shapes, out=out, transform=transform, all_touched=source.all_touched)
    return out
