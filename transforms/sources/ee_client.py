"""The `ee` client, once per process: credentials, `ee.Initialize` (offline for a loopback url),
its own retries off, a connection per fetch thread, and the one function that sends a pixel
request whose expression is already serialized.

`post_compute_pixels` is the transport: it posts `projects/*/image:computePixels` through the
`ee` client's own authorized resource with a body whose `expression` is the serialized graph
(a dict, built once per worker process), so the graph is not re-serialized per request as
`ee.data.computePixels(ee.Image)` does (its `serializer.encode` hashes every node). Keep request
building here, in this one small function, so another transport can replace it.
"""

from __future__ import annotations

import ipaddress
import threading
import urllib.parse
from typing import Optional

from pixelbeam.transforms.sources.base import SourceError

EE_SCOPES = ("https://www.googleapis.com/auth/earthengine", "https://www.googleapis.com/auth/cloud-platform")

_init_lock = threading.Lock()
_initialized_for: Optional[tuple] = None


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_credentials(credentials: str, url: str):
    """`default` (application default credentials), `anonymous` (a loopback url only, e.g. the
    emulator), or the path of a service-account key file."""
    if credentials == "anonymous":
        if not is_loopback(url):
            raise SourceError(f"source.credentials: anonymous is only allowed for a loopback url (got {url!r}); "
                              "use default credentials or a service-account key file")
        import google.auth.credentials
        return google.auth.credentials.AnonymousCredentials()
    if credentials == "default":
        import google.auth
        try:
            creds, _ = google.auth.default(scopes=list(EE_SCOPES))
        except google.auth.exceptions.DefaultCredentialsError:
            raise SourceError("source.credentials: no Google application default credentials; run "
                              "'gcloud auth application-default login' or give a service-account key file") from None
        return creds
    from google.oauth2 import service_account
    try:
        return service_account.Credentials.from_service_account_file(credentials, scopes=list(EE_SCOPES))
    except (OSError, ValueError) as e:
        raise SourceError(f"source.credentials: cannot read the service-account key file ({type(e).__name__}); "
                          "give a readable JSON key, default, or anonymous for a local emulator") from None


def initialize_earth_engine(url: str, project: Optional[str], credentials: str, timeout_s: float) -> None:
    """Initialize the `ee` client once per process for (url, project, credentials)."""
    global _initialized_for
    key = (url, project, credentials, timeout_s)
    with _init_lock:
        if _initialized_for == key:
            return
        import ee
        creds = load_credentials(credentials, url)
        if is_loopback(url):
            _initialize_offline(ee, creds, url, project)
        else:
            ee.Initialize(credentials=creds, url=url, project=project)
        ee.data.setMaxRetries(0)
        ee.data.setDeadline(int(timeout_s * 1000))
        _widen_connection_pool(ee)
        _initialized_for = key


def _widen_connection_pool(ee, connections: int = 128) -> None:
    """Keep a connection per fetch thread: `requests` keeps 10 per host by default, so with
    40 requests in flight 30 would open a new TLS connection each time."""
    from requests.adapters import HTTPAdapter
    session = ee.data._get_state().requests_session  # the session every ee call goes through
    for prefix in ("https://", "http://"):
        session.mount(prefix, HTTPAdapter(pool_connections=4, pool_maxsize=connections))


def _initialize_offline(ee, creds, url: str, project: Optional[str]) -> None:
    """ee.Initialize against a local server: skip the client's download of the public data
    catalog (used only to warn about deprecated assets), which needs the internet."""
    import ee.deprecation
    fetch = ee.deprecation._FetchDataCatalogStac
    ee.deprecation._FetchDataCatalogStac = lambda: {}
    try:
        ee.Initialize(credentials=creds, url=url, project=project or "pixelbeam-local")
    finally:
        ee.deprecation._FetchDataCatalogStac = fetch


def post_compute_pixels(body: dict) -> bytes:
    """The raw answer of `POST v1/projects/{project}/image:computePixels` for `body`
    (`expression` already serialized, `fileFormat`, `grid`, `bandIds`); errors are the client's
    (`ee.EEException` from the HTTP error, ConnectionError, TimeoutError), as for
    `ee.data.computePixels`."""
    from ee import data
    body = dict(body)
    data._maybe_populate_workload_tag(body)
    call = data._get_cloud_projects_raw().image().computePixels(project=data._get_projects_path(), body=body)
    return data._execute_cloud_call(call)

