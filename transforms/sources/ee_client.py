"""The `ee` client, once per process: credentials, `ee.Initialize` (offline for a loopback url),
its own retries off, a connection per fetch thread, and the lean transport pixel requests go
through.

Pixel requests do not go through the `ee` client's discovery resource (googleapiclient and an
httplib2 shim over `requests`, several CPU-milliseconds a request): `rest()` is the process's
`ee_rest.EERest`, built from the state `ee` was initialized with (base url, project,
credentials, headers), which posts `image:computePixels` / `assets/*:getPixels` with the
serialized expression already encoded (see ee_rest). `post_compute_pixels` posts one body
through it. The `ee` client stays for initialization, serialization and the launcher's
listing (`value:compute`).
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
_rest = None  # the EERest of the initialized state
_rest_timeout_s = 120.0


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
    global _initialized_for, _rest, _rest_timeout_s
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
        _rest, _rest_timeout_s = None, timeout_s
        _initialized_for = key


def rest():
    """The pixel transport of the `ee` state as it is now (initialize_earth_engine first); built
    again if `ee` was initialized anew since (another url, project or credentials)."""
    global _rest
    from ee import data
    state = data._get_state()
    key = (state.cloud_api_base_url, state.cloud_api_user_project, id(state.credentials), state.cloud_api_key)
    transport = _rest
    if transport is None or transport.state_key != key:
        with _init_lock:
            if _rest is None or _rest.state_key != key:
                from pixelbeam.transforms.sources.ee_rest import EERest
                if state.cloud_api_resource_raw is None:
                    raise RuntimeError("initialize_earth_engine must be called before a pixel request")
                _rest = EERest.from_ee(_rest_timeout_s)
                _rest.state_key = key
            transport = _rest
    return transport


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
    (`expression` already serialized, `fileFormat`, `grid`, `bandIds`), through `rest()`;
    errors as ee_rest says (FetchErrors for HTTP errors, urllib3's transport errors)."""
    fixed = dict(body)
    grid, band_ids = fixed.pop("grid"), fixed.pop("bandIds", None)
    transport = rest()
    return transport.post(transport.compute_pixels_url(), transport.template(fixed).body(grid, band_ids))

