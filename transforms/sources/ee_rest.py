"""Earth Engine pixel requests over a lean authorized HTTP pool, not through the `ee` client.

`EERest` posts the documented REST methods (`v1/projects/{p}/image:computePixels`,
`v1/{asset name}:getPixels`) as `ee.data.computePixels`/`getPixels` would: the same url (the
base url `ee` was initialized with), the same body fields (`fileFormat`, `grid`, `bandIds`,
`expression`, the workload tag), the same headers (`ee.data._make_request_headers`: the
client version, a user agent if set, `X-Goog-User-Project`), the API key if set, and the
credentials `ee` holds (google-auth; the quota project dropped as `ee` does, the header naming
it instead). The transport is google-auth's `AuthorizedHttp` over a `urllib3.PoolManager`
(connections kept per host: `pool_size`, urllib3's own retries off, `timeout_s` to connect and
to read), so a request costs a JSON concatenation, one HTTP exchange and no discovery client.

`BodyTemplate` holds a request body's fixed part (the serialized expression, the format)
already encoded to bytes, so only the grid and band ids are encoded per request.

Errors: an HTTP error is raised as the FetchError `classify_http_status` gives for its status
and the server's `error.message` (429 quota, 408/5xx transient with Retry-After, other 4xx
permanent), the same text the `ee` path produced; a body cut short is a TransientError
"truncated"; urllib3's transport errors (timeouts, resets, refused connections) are raised as
they are and classified by transforms/fetching/retry.py. The token never appears in a message.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any, Optional

from pixelbeam.transforms.fetching.retry import TransientError, classify_http_status

_RESERVED = "/:@!$&'()*+,;=-._~"  # left as they are by the discovery client's {+name} expansion
_dumps = json.JSONEncoder(separators=(",", ":")).encode


class BodyTemplate:
    """A JSON request body whose fixed fields are encoded once; `body(grid, band_ids)` adds
    the per-request `grid` and optional `bandIds` (bytes, one JSON object)."""

    def __init__(self, fixed: dict[str, Any]):
        self.prefix = _dumps(fixed)[:-1].encode() + (b"," if fixed else b"")

    def body(self, grid: dict, band_ids: Optional[list] = None) -> bytes:
        tail = b'"grid":' + _dumps(grid).encode()
        if band_ids:
            tail += b',"bandIds":' + _dumps(list(band_ids)).encode()
        return self.prefix + tail + b"}"


class EERest:
    """Posts pixel requests; one per worker process, shared by its threads (urllib3's pool
    and google-auth's credentials are thread-safe)."""

    def __init__(self, base_url: str, project_path: str, credentials, headers: dict[str, str],
                 timeout_s: float, api_key: Optional[str] = None, workload_tag: Optional[str] = None,
                 pool_size: int = 128):
        import urllib3
        from google.auth.transport.urllib3 import AuthorizedHttp
        self.base_url, self.project_path, self.workload_tag = base_url, project_path, workload_tag
        self.state_key: Optional[tuple] = None  # what it was built from (ee_client.rest)
        self.headers = {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate", **headers}
        self.query = "?" + urllib.parse.urlencode({"key": api_key}) if api_key else ""
        self.timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        pool = urllib3.PoolManager(num_pools=4, maxsize=pool_size, block=False, retries=False)
        self.http = AuthorizedHttp(credentials, http=pool) if credentials is not None else pool

    @classmethod
    def from_ee(cls, timeout_s: float, pool_size: int = 128) -> "EERest":
        """The transport for the state `ee` was initialized with (ee.Initialize first)."""
        from ee import data
        state = data._get_state()
        creds = state.credentials
        if creds is not None and getattr(creds, "quota_project_id", None):
            creds = creds.with_quota_project(None)  # as ee does; X-Goog-User-Project names the project
        return cls(state.cloud_api_base_url, data._get_projects_path(), creds, data._make_request_headers() or {},
                   timeout_s, api_key=state.cloud_api_key, workload_tag=data.getWorkloadTag() or None,
                   pool_size=pool_size)

    def template(self, fixed: dict[str, Any]) -> BodyTemplate:
        """A body template for `fixed` fields, with the workload tag as ee would add it."""
        fixed = dict(fixed)
        if "workloadTag" not in fixed and self.workload_tag:
            fixed["workloadTag"] = self.workload_tag
        elif "workloadTag" in fixed and not fixed["workloadTag"]:
            del fixed["workloadTag"]
        return BodyTemplate(fixed)

    def compute_pixels_url(self) -> str:
        return self._url(f"v1/{self.project_path}/image:computePixels")

    def get_pixels_url(self, asset_id: str) -> str:
        from ee import _cloud_api_utils
        return self._url(f"v1/{_cloud_api_utils.convert_asset_id_to_asset_name(asset_id)}:getPixels")

    def _url(self, path: str) -> str:
        return urllib.parse.urljoin(self.base_url, urllib.parse.quote(path, safe=_RESERVED)) + self.query

    def post(self, url: str, body: bytes) -> bytes:
        """The answer's body (decoded from gzip if it was sent so); raises as the module doc says."""
        import urllib3
        try:
            r = self.http.urlopen("POST", url, body=body, headers=self.headers, timeout=self.timeout,
                                  retries=False)
        except urllib3.exceptions.ProtocolError as e:
            if _is_incomplete_read(e):
                raise TransientError(f"truncated answer: {e}", "truncated") from e
            raise
        if r.status != 200:
            raise classify_http_status(r.status, _error_message(r), r.headers.get("Retry-After"))
        return r.data


def _is_incomplete_read(exc: BaseException) -> bool:
    import http.client
    import urllib3
    kinds = (http.client.IncompleteRead, urllib3.exceptions.IncompleteRead)
    return any(isinstance(a, kinds) for a in (exc, exc.__cause__, exc.__context__, *exc.args))


def _error_message(response) -> str:
    """The server's `error.message` (what googleapiclient's HttpError._get_reason, and so the
    `ee` client, reports), else the HTTP reason phrase."""
    try:
        doc = json.loads(response.data.decode("utf-8"))
        if isinstance(doc, list) and doc:
            doc = doc[0]
        return str(doc["error"]["message"])
    except Exception:  # noqa: BLE001 - not a JSON error document
        return response.reason or ""
