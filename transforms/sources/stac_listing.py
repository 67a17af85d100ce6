"""Finding the items of a STAC source, on the launcher: a STAC API searched with pystac-client,
or a static catalog / collection / ItemCollection file read with pystac. Beam-free.

`list_items(query, bbox)` returns the matching items as STAC dicts (asset hrefs absolute), in
the order found. A STAC API is searched once (POST /search, paged by pystac-client; every
HTTP request retried by `call_with_retries` on 429, 5xx, resets and timeouts) with the
collections, the lon/lat `bbox`, `datetime`, `query` and `filter` (CQL2 text or JSON). A
static catalog is read whole and the same parameters are applied here, normalised by
pystac-client's own parsing (so `2023-06` means the whole month either way) and evaluated
with cql2 (`query` is turned into the equivalent CQL2). Problems are a `SourceError` naming
the field: `source.url` (unreachable, not a STAC API), `source.catalog`, `source.collections`
(a collection that does not exist), `source.query` / `source.filter`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from typing import Any, Iterator, Optional

from pixelbeam.transforms.fetching.retry import FetchError, RetryPolicy, call_with_retries
from pixelbeam.transforms.sources.base import SourceError
from pixelbeam.transforms.sources.remote import hide_secrets

LISTING_POLICY = RetryPolicy(max_attempts=4, base_delay_s=0.5, max_delay_s=8.0)
QUERY_OPS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


@dataclasses.dataclass(frozen=True)
class StacQuery:
    """What to list: a STAC API `url` or a static `catalog` (path or URL), and the search."""

    url: Optional[str] = None
    catalog: Optional[str] = None
    collections: tuple[str, ...] = ()
    datetime: Optional[str] = None
    query: Any = None  # STAC query extension: {"eo:cloud_cover": {"lt": 20}} or ["eo:cloud_cover<20"]
    filter: Any = None  # CQL2 text ("eo:cloud_cover < 20") or CQL2 JSON
    max_items: Optional[int] = None
    limit: int = 100  # items per page
    timeout_s: float = 60.0

    @property
    def where(self) -> str:
        return hide_secrets(self.url or self.catalog or "")


def list_items(query: StacQuery, bbox: Optional[tuple[float, float, float, float]],
               max_items: Optional[int] = -1, policy: RetryPolicy = LISTING_POLICY) -> list[dict]:
    """The items of `query` within `bbox` (lon/lat degrees; None: anywhere), at most
    `max_items` (-1: the query's own cap)."""
    cap = query.max_items if max_items == -1 else max_items
    if query.url:
        return list(_search_api(query, bbox, cap, policy))
    return _search_static(query, bbox, cap)


# -- STAC API ---------------------------------------------------------------------------------


def _api_io(timeout_s: float, policy: RetryPolicy):
    from pystac_client.stac_api_io import StacApiIO

    class RetryingStacApiIO(StacApiIO):
        """pystac-client's HTTP layer, each request retried by pixelbeam's classified policy."""

        def request(self, href, method=None, headers=None, parameters=None):
            return call_with_retries(lambda: StacApiIO.request(self, href, method, headers, parameters), policy)

    return RetryingStacApiIO(timeout=timeout_s, max_retries=None)


def open_api(query: StacQuery, policy: RetryPolicy = LISTING_POLICY):
    """A pystac-client Client on `query.url`; SourceError if it cannot be reached or is no STAC API."""
    import warnings
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses
    where = query.where
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NoConformsTo: checked just below, with a better message
            client = Client.open(query.url, stac_io=_api_io(query.timeout_s, policy))
    except FetchError as e:
        if e.retryable:  # refused, reset, timed out, 5xx after the retries
            raise SourceError(f"source.url: cannot reach {where} ({_short(e)}); check the url and the network") from None
        raise SourceError(f"source.url: {where} is not a STAC API ({_short(e)}); give the root url of a STAC API, "
                          "whose landing page links to /search") from None
    except Exception as e:  # noqa: BLE001 - not JSON, not a STAC object
        raise SourceError(f"source.url: {where} is not a STAC API ({type(e).__name__}: {_short(e)}); give the root "
                          "url of a STAC API, whose landing page links to /search") from None
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        raise SourceError(f"source.url: {where} does not offer STAC item search (no item-search conformance "
                          "class); give a STAC API url, or a static catalog as source.catalog")
    return client


def _search_api(query: StacQuery, bbox, cap: Optional[int], policy: RetryPolicy) -> Iterator[dict]:
    import warnings
    normalised_parameters(query)  # datetime, query and filter checked before any request
    client = open_api(query, policy)
    check_api_collections(client, query)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DoesNotConformTo(QUERY/FILTER): the server answers if it cannot
            search = client.search(collections=list(query.collections) or None, bbox=list(bbox) if bbox else None,
                                   datetime=query.datetime, query=query.query, filter=query.filter,
                                   max_items=cap, limit=min(query.limit, cap) if cap else query.limit, method="POST")
            items = list(search.items_as_dicts())
    except FetchError as e:
        field = "source.filter" if query.filter is not None and e.status == 400 else "source.url"
        raise SourceError(f"{field}: the search of {query.where} failed ({_short(e)}); check "
                          "collections, datetime, query and filter") from None
    except Exception as e:  # noqa: BLE001 - pystac-client's own checks of the parameters
        raise SourceError(f"source.datetime: the search parameters were refused ({type(e).__name__}: "
                          f"{_short(e)}); check datetime (e.g. 2023-06-01/2023-06-30), query and filter") from None
    return iter(items)


def check_api_collections(client, query: StacQuery) -> None:
    """Every named collection exists on the API; SourceError naming source.collections otherwise."""
    if not query.collections:
        return
    try:
        known = [c.id for c in client.get_collections()]
    except Exception as e:  # noqa: BLE001 - an API without /collections: let the search decide
        known = None
        _ = e
    if known is None:
        return
    for name in query.collections:
        if name not in known:
            shown = ", ".join(sorted(known)[:20]) + (", ..." if len(known) > 20 else "")
            raise SourceError(f"source.collections: {name!r} is not a collection of {query.where}; "
                              f"it has {shown or 'none'}")


# -- static catalogs --------------------------------------------------------------------------


def _search_static(query: StacQuery, bbox, cap: Optional[int]) -> list[dict]:
    items, collections = read_static(query.catalog)
    if query.collections:
        for name in query.collections:
            if name not in collections:
                raise SourceError(f"source.collections: {name!r} is not in {query.where}; it has "
                                  f"{', '.join(sorted(collections)) or 'no collection'}")
        items = [i for i in items if i.get("collection") in query.collections]
    params = normalised_parameters(query)
    out = [i for i in items if item_matches(i, params, bbox)]
    return out[:cap] if cap else out


def read_static(catalog: str) -> tuple[list[dict], set[str]]:
    """(items with absolute asset hrefs, collection ids) of a catalog, collection or
    ItemCollection file (path or URL), read with pystac."""
    import pystac
    where = hide_secrets(catalog)
    try:
        doc = json.loads(pystac.StacIO.default().read_text(catalog))
    except FileNotFoundError:
        raise SourceError(f"source.catalog: {where} does not exist; give a STAC catalog, collection or "
                          "ItemCollection JSON file") from None
    except (OSError, ValueError) as e:
        raise SourceError(f"source.catalog: cannot read {where} as JSON ({type(e).__name__}); give a STAC catalog, "
                          "collection or ItemCollection JSON file") from None
    try:
        if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
            found = list(pystac.ItemCollection.from_dict(doc, preserve_dict=False))
            base = os.path.dirname(os.path.abspath(catalog)) if "://" not in catalog else catalog.rsplit("/", 1)[0]
            for item in found:
                for asset in item.assets.values():
                    if "://" not in asset.href and not os.path.isabs(asset.href):
                        asset.href = os.path.normpath(os.path.join(base, asset.href))
        else:
            root = pystac.read_dict(doc, href=catalog)
            if isinstance(root, pystac.Item):
                found = [root]
            else:
                found = list(root.get_items(recursive=True))
    except Exception as e:  # noqa: BLE001 - pystac's STACTypeError, KeyError on a broken document
        raise SourceError(f"source.catalog: {where} is not a STAC catalog, collection or ItemCollection "
                          f"({type(e).__name__}: {_short(e)})") from None
    items = []
    for item in found:
        if item.get_self_href():
            item.make_asset_hrefs_absolute()
        items.append(item.to_dict(transform_hrefs=False))
    return items, {i.get("collection") for i in items if i.get("collection")}


def normalised_parameters(query: StacQuery) -> dict:
    """datetime, query and filter as pystac-client would send them (POST), checked."""
    import cql2
    from pystac_client.item_search import ItemSearch
    params: dict = {}
    for field, key, example in (("datetime", "datetime", "2023-06-01/2023-06-30, 2023-06 or ../2023-06-30"),
                                ("query", "query", '{"eo:cloud_cover": {"lt": 20}} or ["eo:cloud_cover<20"]')):
        try:
            params.update(ItemSearch(url="file:", method="POST", **{key: getattr(query, key)}).get_parameters())
        except Exception as e:  # noqa: BLE001 - pystac-client raises plain Exceptions
            raise SourceError(f"source.{field}: {_short(e)}; e.g. {example}") from None
    clauses = [query_to_cql2(params.get("query"))]
    if query.filter is not None:
        try:
            clauses.append(cql2.Expr(query.filter).to_json())
        except Exception as e:  # noqa: BLE001 - cql2's ParseError / ValidationError
            raise SourceError(f"source.filter: not valid CQL2 ({_short(e)}); e.g. \"eo:cloud_cover < 20\"") from None
    clauses = [c for c in clauses if c]
    expr = cql2.Expr(clauses[0] if len(clauses) == 1 else {"op": "and", "args": clauses}) if clauses else None
    return {"datetime": params.get("datetime"), "expr": expr}


def query_to_cql2(query: Optional[dict]) -> Optional[dict]:
    """The STAC query extension ({property: {op: value}}) as CQL2 JSON."""
    if not query:
        return None
    args = []
    for prop, ops in query.items():
        if not isinstance(ops, dict):
            raise SourceError(f"source.query: {prop!r} needs {{op: value}} (ops {', '.join(QUERY_OPS)}, "
                              "startsWith, endsWith, contains, in)")
        for op, value in ops.items():
            value = _number(value)
            p = {"property": prop}
            if op in QUERY_OPS:
                args.append({"op": QUERY_OPS[op], "args": [p, value]})
            elif op in ("startsWith", "endsWith", "contains"):
                pattern = {"startsWith": f"{value}%", "endsWith": f"%{value}", "contains": f"%{value}%"}[op]
                args.append({"op": "like", "args": [p, pattern]})
            elif op == "in":
                args.append({"op": "in", "args": [p, [_number(v) for v in value]]})
            else:
                raise SourceError(f"source.query: {op!r} is not a query operator; use {', '.join(QUERY_OPS)}, "
                                  "startsWith, endsWith, contains or in")
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


def item_matches(item: dict, params: dict, bbox=None) -> bool:
    """An item within `bbox` (lon/lat), the datetime interval and the CQL2 expression."""
    if bbox is not None and item.get("geometry"):
        import shapely
        from shapely.geometry import shape
        if not shape(item["geometry"]).intersects(shapely.box(*bbox)):
            return False
    if params.get("datetime") and not _in_interval(item.get("properties") or {}, params["datetime"]):
        return False
    expr = params.get("expr")
    return expr is None or bool(expr.matches(item))


def item_interval(props: dict) -> tuple[Optional[dt.datetime], Optional[dt.datetime]]:
    start = props.get("start_datetime") or props.get("datetime")
    end = props.get("end_datetime") or props.get("datetime")
    return _parse(start), _parse(end)


def _in_interval(props: dict, interval: str) -> bool:
    lo, _, hi = interval.partition("/")
    if not _:
        hi = lo
    start, end = item_interval(props)
    lo_t = None if lo in ("", "..") else _parse(lo)
    hi_t = None if hi in ("", "..") else _parse(hi)
    if start is None:
        return False
    return (hi_t is None or start <= hi_t) and (lo_t is None or (end or start) >= lo_t)


def _parse(value) -> Optional[dt.datetime]:
    if not value:
        return None
    t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _number(value):
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def _short(e: BaseException) -> str:
    text = hide_secrets(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    return text[:200]
