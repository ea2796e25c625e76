"""The one home for talking to Label Studio's API: every module gets its client here.

Two clients, each for the work it can do:

- **label-studio-sdk** (`sdk_client`: ``LabelStudio(base_url, api_key)``) for the
  `clipseg-label` commands' project work in `backend.batch.push` and `backend.batch.project`:
  listing a project's tasks (the SDK's pager fetches the later pages), importing tasks and
  predictions, creating and updating predictions. Typed calls, pagination and Label Studio's
  answer in an `ApiError` are what those need; the SDK exchanges a personal access token for
  access tokens itself, and sends a legacy token as is.
- **`LabelStudioClient`**, hand-written on `requests`, for authenticated GETs: the task images
  the server and the commands download (`backend.images.ImageLoader`) and the project export
  the learning loop syncs from (`backend.learning.loop`). `label_studio_client` builds it from
  the settings and a /setup's `hostname` / `access_token`, `configured_client` from the
  settings alone. It exists because label-studio-sdk 2.1.2 cannot do what these need:

  - *bounded, streamed downloads*: `get(url, stream=True)` hands back the `requests.Response`
    unread, and `ImageLoader._read_capped` reads its raw stream with ``read1``, checking the
    byte cap (CLIPSEG_MAX_DOWNLOAD_BYTES) and one deadline over the whole download
    (CLIPSEG_HTTP_TIMEOUT, or what is left of a /predict's budget) while a slow server drips
    its bytes. The SDK's calls return parsed bodies (its ``files.download`` returns None), and
    it retries a refused connection or a 5xx after sleeping about 1 s, then 2 s, whatever the
    caller's deadline;
  - *redirects and credentials*: `get` refuses any URL that is not on Label Studio's own origin
    (`owns`: scheme, host and port, of the URL as `parse_http_url` rebuilt it), and it never
    follows a redirect (nor does the token exchange), so the key only ever goes there; a
    redirect from the API is a `LabelStudioError` that names it. `ImageLoader._download`
    follows an image's redirects by hand, each checked against the host policy, without
    credentials off Label Studio. The
    SDK's httpx client follows redirects itself (``follow_redirects=True``);
  - *tokens as a server needs them*: a legacy token is sent as ``Authorization: Token <key>``;
    a personal access token (any well-formed JWT) is exchanged at ``/api/token/refresh/`` for
    an access token sent as ``Authorization: Bearer <access>``, cached, and exchanged again
    when Label Studio answers 401; a 401 that remains is a `LabelStudioError` that says what
    to do (Label Studio 1.23 refuses legacy tokens unless the organization enables them). The
    SDK refreshes only when the access token's ``exp`` has passed by this machine's clock, and
    raises `ApiError` when the client is made for a refresh token without an ``exp`` or past
    it; here Label Studio judges the token, on the first request, and the answer says why.

`LabelStudioClient` checks URLs with `backend.images.parse_http_url` (strict parsing, the URL
rebuilt from what was checked), which lives with the rest of the image source policy.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urljoin

import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import is_jwt_well_formed
from label_studio_sdk.core.api_error import ApiError

from backend.errors import LabelStudioError
from backend.images import DisallowedSourceError, parse_http_url
from backend.settings import Settings

logger = logging.getLogger(__name__)


class LabelStudioClient:
    """Authenticated GETs against one Label Studio (legacy token or personal access token)."""

    def __init__(self, base_url: str, api_key: str, timeout: float) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL must start with http:// or https://: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key or ""
        self.timeout = timeout
        self.is_personal_token = bool(self.api_key) and is_jwt_well_formed(self.api_key)
        self._access: str | None = None
        self._lock = threading.Lock()
        self.session = requests.Session()

    def owns(self, url: str) -> bool:
        """Whether `url` points at this Label Studio (same scheme, host and port, parsed by
        `parse_http_url`; a URL it refuses is not Label Studio's)."""
        try:
            return parse_http_url(url).origin == parse_http_url(self.base_url).origin
        except DisallowedSourceError:
            return False

    def absolute(self, url: str) -> str:
        return urljoin(self.base_url + "/", url.lstrip("/")) if url.startswith("/") else url

    def _exchange(self) -> str:
        response = self.session.post(
            f"{self.base_url}/api/token/refresh/",
            json={"refresh": self.api_key},
            timeout=self.timeout,
            allow_redirects=False,  # a 307/308 would resend the refresh token to its Location
        )
        if response.is_redirect:
            raise LabelStudioError(_redirect_message(response, "/api/token/refresh/"))
        if response.status_code != 200:
            raise LabelStudioError(
                f"Label Studio refused the personal access token at /api/token/refresh/ "
                f"(HTTP {response.status_code}); create a new one in Account & Settings"
            )
        access = response.json().get("access")
        if not access:
            raise LabelStudioError(
                "Label Studio's /api/token/refresh/ answer has no 'access' token"
            )
        return access

    def auth_headers(self, refresh: bool = False) -> dict[str, str]:
        """The Authorization header for this Label Studio; `refresh` forces a new access token."""
        if not self.api_key:
            return {}
        if not self.is_personal_token:
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            if self._access is None or refresh:
                self._access = self._exchange()
            return {"Authorization": f"Bearer {self._access}"}

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        """GET `url` (relative to Label Studio or on it) with credentials; retried once on a 401.

        Redirects are not followed: `requests` would keep the Authorization header on a redirect
        to the same host with another scheme, which is another origin. A caller that follows
        them checks each Location itself (`backend.images.ImageLoader`)."""
        url = self.absolute(url)
        if not self.owns(url):
            raise DisallowedSourceError(f"not a Label Studio URL: {url}")
        url = parse_http_url(url).url  # connect to exactly what was checked
        kwargs.setdefault("timeout", self.timeout)
        kwargs["allow_redirects"] = False
        response = self.session.get(url, headers=self.auth_headers(), **kwargs)
        if response.status_code == 401 and self.is_personal_token:
            response.close()
            response = self.session.get(url, headers=self.auth_headers(refresh=True), **kwargs)
        if response.status_code == 401:
            hint = (
                " (Label Studio 1.23 rejects legacy tokens unless the organization enables them:"
                " use a personal access token)"
                if self.api_key and not self.is_personal_token
                else ""
            )
            response.close()
            raise LabelStudioError(f"Label Studio answered 401 for {url}{hint}")
        return response

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        response = self.get(path, params=params)
        if response.is_redirect:
            response.close()
            raise LabelStudioError(_redirect_message(response, path))
        if response.status_code != 200:
            raise LabelStudioError(f"Label Studio answered HTTP {response.status_code} for {path}")
        return response.json()


def label_studio_client(
    settings: Settings, hostname: str | None, access_token: str | None
) -> LabelStudioClient | None:
    """The Label Studio a project's images and annotations come from, with its key.

    `hostname` and `access_token` are what a /setup sent, and anyone who can reach the backend
    can send one, so a request never chooses where the configured key goes:

    - LABEL_STUDIO_URL set: always that URL. The key is LABEL_STUDIO_API_KEY; without one, the
      `access_token` of a /setup whose `hostname` has LABEL_STUDIO_URL's origin (scheme, host,
      port). A `hostname` with another origin is ignored (logged).
    - LABEL_STUDIO_API_KEY set without LABEL_STUDIO_URL: no Label Studio; the key is never sent
      to a `hostname` a request named (relative image URLs then fail, saying to set the URL).
    - neither: `hostname` with the `access_token` of the same /setup, Label Studio's own
      behaviour (a request's token goes to that request's host, never another); a `hostname`
      without a token is not used.
    """
    hostname = (hostname or "").strip().rstrip("/")
    token = (access_token or "").strip()
    configured_url, configured_key = settings.label_studio_url, settings.label_studio_api_key
    url, key = "", ""
    if configured_url:
        url, key = configured_url, configured_key
        same = hostname and _same_origin(hostname, configured_url)
        if hostname and not same:
            logger.warning(
                "/setup sent hostname %r, not LABEL_STUDIO_URL's origin: ignored, using %s",
                hostname[:200],
                configured_url,
            )
        if not key and token and same:
            key = token
    elif configured_key:
        if hostname:
            logger.warning(
                "/setup sent hostname %r, but LABEL_STUDIO_API_KEY is only ever sent to "
                "LABEL_STUDIO_URL, which is not set: set LABEL_STUDIO_URL to download from "
                "Label Studio",
                hostname[:200],
            )
        return None
    elif hostname and token:
        url, key = hostname, token
    if not url:
        return None
    try:
        return LabelStudioClient(url, key, settings.http_timeout)
    except ValueError as exc:
        logger.error("%s", exc)
        return None


def _redirect_message(response: requests.Response, path: str) -> str:
    location = response.headers.get("Location", "")[:200]
    return (
        f"Label Studio answered HTTP {response.status_code} for {path}, a redirect to "
        f"{location!r}, which is not followed with credentials: set LABEL_STUDIO_URL to the "
        "address Label Studio serves its API at"
    )


def _same_origin(a: str, b: str) -> bool:
    try:
        return parse_http_url(a).origin == parse_http_url(b).origin
    except DisallowedSourceError:
        return False


def configured_client(settings: Settings) -> LabelStudioClient | None:
    """The Label Studio of LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY (None when the URL is not
    set), for a command run by the operator; ValueError when the URL is not http(s)."""
    if not settings.label_studio_url:
        return None
    return LabelStudioClient(
        settings.label_studio_url, settings.label_studio_api_key, settings.http_timeout
    )


def sdk_client(url: str, api_key: str, **client_kwargs: Any) -> LabelStudio:
    """The label-studio-sdk client for ``url``; raises ValueError naming the missing setting.

    ``client_kwargs`` go to ``LabelStudio`` (tests pass an ``httpx_client`` with a mock
    transport)."""
    if not url:
        raise ValueError("no Label Studio URL: pass --url or set LABEL_STUDIO_URL")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"the Label Studio URL must start with http:// or https://: {url!r}")
    if not api_key:
        raise ValueError(
            "no API key: pass --api-key or set LABEL_STUDIO_API_KEY (a personal access token "
            "or a legacy token, from Label Studio's Account & Settings)"
        )
    try:
        return LabelStudio(base_url=url.rstrip("/"), api_key=api_key, **client_kwargs)
    except ApiError as exc:  # the SDK checks a personal access token's expiry here
        raise ValueError(
            f"the API key is not usable: {_detail(exc.body)} (create a new personal access "
            "token in Label Studio's Account & Settings, or pass a legacy token)"
        ) from exc


def _detail(body: Any) -> str:
    """The ``detail`` of an SDK `ApiError`'s body (Label Studio's message), else the body."""
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"]
    return str(body)


__all__ = [
    "LabelStudioClient",
    "configured_client",
    "label_studio_client",
    "sdk_client",
]
