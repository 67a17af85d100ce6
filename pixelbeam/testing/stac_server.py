"""A minimal local STAC API over a static catalog, for tests, the tour and offline jobs.

`StacApiServer(catalog)` serves, on 127.0.0.1, what pystac-client needs of a STAC API:
`GET /` (a landing page with the core, item-search, collections, query and filter conformance
classes), `/conformance`, `/collections`, `/collections/{id}`, and `GET`/`POST /search` with
`collections`, `ids`, `bbox`, `datetime`, `query`, `filter` (CQL2 text or JSON), `limit` and
paging (`next` links with a token). The catalog's COGs are served too, under `/files/` with
Range requests (pixelbeam.testing.cog_server), and item asset hrefs point there, so a job
reads them over HTTP as it would from a cloud bucket. Every request is logged (`log`) and
failures can be injected (`fail(path, status, times)`).

    python -m pixelbeam.testing.stac_server --demo /dev/shm/stac-demo --port 8766

builds pixelbeam's demo catalog (pixelbeam.testing.stac_catalog) if the folder has none and
serves it until killed, printing `STAC_API_URL=http://127.0.0.1:8766`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler
from typing import Optional

from pixelbeam.testing.cog_server import FileHandlerMixin, LoopbackServer, Request

CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
]
MAX_LIMIT = 1000


class _Handler(FileHandlerMixin, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet
        pass

    def do_HEAD(self):
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        if path.startswith("/files/"):
            return self.serve_file(path[len("/files/"):], head=True)
        self._json(405, {"code": "MethodNotAllowed", "description": "HEAD is for /files/ only"})

    def do_GET(self):
        parts = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(parts.path).rstrip("/") or "/"
        if path.startswith("/files/"):
            return self.serve_file(path[len("/files/"):])
        status = self.server.take_fault(path)
        if status:
            return self._json(status, {"code": "Injected", "description": "injected failure"})
        api = self.server
        if path == "/":
            return self._json(200, api.landing())
        if path == "/conformance":
            return self._json(200, {"conformsTo": CONFORMANCE})
        if path == "/collections":
            return self._json(200, {"collections": [api.collection(c) for c in api.collections],
                                    "links": [{"rel": "self", "href": f"{api.url}/collections"}]})
        if path.startswith("/collections/") and path.count("/") == 2:
            name = path.split("/")[2]
            if name not in api.collections:
                return self._json(404, {"code": "NotFound", "description": f"collection {name} not found"})
            return self._json(200, api.collection(name))
        if path == "/search":
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
            return self._search(query_parameters(query))
        self._json(404, {"code": "NotFound", "description": f"{path} is not an endpoint"})

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        status = self.server.take_fault(path)
        if status:
            return self._json(status, {"code": "Injected", "description": "injected failure"})
        if path != "/search":
            return self._json(404, {"code": "NotFound", "description": f"POST {path} is not an endpoint"})
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._json(400, {"code": "BadRequest", "description": "the body is not JSON"})
        self._search(body, method="POST")

    def _search(self, params: dict, method: str = "GET"):
        try:
            page = self.server.search(params, method)
        except ValueError as e:
            return self._json(400, {"code": "BadRequest", "description": str(e)})
        self._json(200, page, content_type="application/geo+json")

    def _json(self, status: int, doc: dict, content_type: str = "application/json"):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        path = urllib.parse.urlsplit(self.path).path
        self.server.log.add(Request(path, self.command, (), len(body), status))


def query_parameters(query: dict) -> dict:
    """GET /search parameters as a POST body would hold them."""
    out: dict = {}
    for key, value in query.items():
        if key in ("collections", "ids"):
            out[key] = [v for v in value.split(",") if v]
        elif key == "bbox":
            out[key] = [float(v) for v in value.split(",")]
        elif key == "limit":
            out[key] = int(value)
        elif key == "query" or (key == "filter" and query.get("filter-lang") == "cql2-json"):
            out[key] = json.loads(value)
        else:
            out[key] = value
    return out


class StacApiServer(LoopbackServer):
    """A STAC API over the items of a static catalog (module doc)."""

    def __init__(self, catalog: str, port: int = 0, required_query: Optional[dict] = None,
                 files_root: Optional[str] = None):
        from pixelbeam.transforms.sources.stac_listing import read_static
        root = files_root or os.path.dirname(os.path.abspath(catalog))
        super().__init__(_Handler, port=port, files_root=root, required_query=required_query)
        self.items, names = read_static(catalog)
        self.collections = {name: self._read_collection(catalog, name) for name in sorted(names)}

    @staticmethod
    def _read_collection(catalog: str, name: str) -> dict:
        path = os.path.join(os.path.dirname(os.path.abspath(catalog)), name, "collection.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            doc["links"] = []
            return doc
        return {"type": "Collection", "id": name, "stac_version": "1.0.0", "description": name, "license": "other",
                "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
                "links": []}

    def landing(self) -> dict:
        url = self.url
        return {"type": "Catalog", "id": "pixelbeam-local-stac", "stac_version": "1.0.0",
                "description": "pixelbeam's local STAC API (pixelbeam.testing.stac_server)", "conformsTo": CONFORMANCE,
                "links": [{"rel": "self", "href": f"{url}/", "type": "application/json"},
                          {"rel": "root", "href": f"{url}/", "type": "application/json"},
                          {"rel": "conformance", "href": f"{url}/conformance"},
                          {"rel": "data", "href": f"{url}/collections", "type": "application/json"},
                          {"rel": "search", "href": f"{url}/search", "type": "application/geo+json", "method": "GET"},
                          {"rel": "search", "href": f"{url}/search", "type": "application/geo+json",
                           "method": "POST"}]}

    def collection(self, name: str) -> dict:
        doc = dict(self.collections[name])
        doc["links"] = [{"rel": "self", "href": f"{self.url}/collections/{name}"},
                        {"rel": "root", "href": f"{self.url}/"},
                        {"rel": "items", "href": f"{self.url}/collections/{name}/items"}]
        return doc

    def served(self, item: dict) -> dict:
        """The item as the API answers it: asset hrefs under /files/, its own links."""
        out = copy.deepcopy(item)
        root = os.path.realpath(self.files_root)
        for asset in out.get("assets", {}).values():
            href = asset.get("href", "")
            if "://" not in href and os.path.realpath(href).startswith(root + os.sep):
                rel = os.path.relpath(os.path.realpath(href), root).replace(os.sep, "/")
                asset["href"] = f"{self.url}/files/{urllib.parse.quote(rel)}"
        name = out.get("collection")
        out["links"] = [{"rel": "self", "href": f"{self.url}/collections/{name}/items/{out['id']}"},
                        {"rel": "collection", "href": f"{self.url}/collections/{name}"},
                        {"rel": "root", "href": f"{self.url}/"}]
        return out

    def search(self, params: dict, method: str = "GET") -> dict:
        """One page of /search (ValueError: a 400 with its message)."""
        from pixelbeam.transforms.sources.base import SourceError
        from pixelbeam.transforms.sources.stac_listing import StacQuery, item_matches, normalised_parameters
        unknown = set(params) - {"collections", "ids", "bbox", "datetime", "query", "filter", "filter-lang",
                                 "limit", "token", "intersects", "sortby", "fields"}
        if unknown:
            raise ValueError(f"unknown search parameters: {', '.join(sorted(unknown))}")
        try:
            normal = normalised_parameters(StacQuery(datetime=params.get("datetime"), query=params.get("query"),
                                                     filter=params.get("filter")))
        except SourceError as e:
            raise ValueError(str(e)) from None
        limit = min(int(params.get("limit") or 10), MAX_LIMIT)
        bbox = params.get("bbox")
        if bbox is not None and len(bbox) not in (4, 6):
            raise ValueError("bbox needs 4 or 6 numbers")
        bbox = tuple(bbox[:2] + bbox[-2:]) if bbox and len(bbox) == 6 else (tuple(bbox) if bbox else None)
        found = [i for i in self.items
                 if (not params.get("collections") or i.get("collection") in params["collections"])
                 and (not params.get("ids") or i.get("id") in params["ids"]) and item_matches(i, normal, bbox)]
        start = int(params.get("token") or 0)
        page = found[start:start + limit]
        links = [{"rel": "root", "href": f"{self.url}/"}]
        if start + limit < len(found):
            following = {**{k: v for k, v in params.items() if k != "token"}, "token": str(start + limit)}
            if method == "POST":
                links.append({"rel": "next", "href": f"{self.url}/search", "method": "POST", "body": following,
                              "merge": False, "type": "application/geo+json"})
            else:
                encoded = {k: (",".join(map(str, v)) if isinstance(v, list) and k in ("collections", "ids", "bbox")
                               else json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in following.items()}
                links.append({"rel": "next", "href": f"{self.url}/search?{urllib.parse.urlencode(encoded)}",
                              "method": "GET", "type": "application/geo+json"})
        return {"type": "FeatureCollection", "features": [self.served(i) for i in page], "links": links,
                "numberMatched": len(found), "numberReturned": len(page)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m pixelbeam.testing.stac_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalog", help="a static catalog.json to serve")
    p.add_argument("--demo", metavar="FOLDER", help="serve pixelbeam's demo catalog in FOLDER (made if missing)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = p.parse_args(argv)
    if bool(args.catalog) == bool(args.demo):
        p.error("give --catalog or --demo")
    catalog = args.catalog
    if args.demo:
        catalog = os.path.join(args.demo, "catalog.json")
        if not os.path.exists(catalog):
            from pixelbeam.testing.stac_catalog import make_demo_catalog
            make_demo_catalog(args.demo)
    server = StacApiServer(catalog, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"STAC_API_URL={server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
