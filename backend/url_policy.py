"""The URL policy: one parser decides where a request may go, and the request goes exactly there.

The host allowlist was once checked with `urllib.parse` while `requests` (urllib3) connected by
its own reading of the URL, and the two disagree on URLs such as
`http://127.0.0.2:18082\\@127.0.0.1:18081/img.png` (urllib.parse: host 127.0.0.1, after the
userinfo `127.0.0.2:18082\\`; urllib3: host 127.0.0.2, path `\\@127.0.0.1...`), so a request
checked for one host went to another with Label Studio's API key. Here:

- `parse_url` parses once, strictly: http(s) only; no userinfo, no backslash, no control
  character, no space in the authority; a host of letters, digits, `.`, `-`, `_` or a bracketed
  IPv6 address; a port in 1..65535. Anything else is refused (`UrlRefused`) instead of being
  read one way or another. The result, a `Target`, is rebuilt from the parsed parts
  (`Target.url`), so nothing the parser skipped reaches the HTTP client.
- `send` connects to the target only: it prepares the request and refuses it unless the URL
  `requests` would connect to has the same scheme, host and port when read by urllib3 (which
  connects), by `urllib.parse` and by `parse_url`. Redirects are never followed by `requests`
  (`allow_redirects=False`): the caller resolves each `Location` with `redirect_target` and
  checks the new target with the same policy.
- Credentials: `send` removes any Authorization header unless the caller says the target is
  Label Studio's origin (scheme, host and port equal to LABEL_STUDIO_URL's), and `requests`
  is never allowed to add one from `~/.netrc`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

DEFAULT_PORTS = {"http": 80, "https": 443}
#: Longest URL accepted (Label Studio's presigned URLs are a few hundred characters).
MAX_URL_LENGTH = 16_384
_HOST_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class UrlRefused(ValueError):
    """A URL the backend will not request; the message says what is wrong with it."""


@dataclass(frozen=True)
class Origin:
    """Where a request connects: scheme, host (lower case; IPv6 without brackets) and port."""

    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        """`host[:port]` as written in a URL (the port left out when it is the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}"


@dataclass(frozen=True)
class Target:
    """A parsed URL: its origin and its path with the query (`/...`; the fragment dropped)."""

    origin: Origin
    path: str

    @property
    def url(self) -> str:
        return f"{self.origin}{self.path}"


def _host_port(netloc: str, scheme: str, url: str) -> tuple[str, int]:
    """(host, port) of an authority without userinfo; UrlRefused when it is not plainly one."""
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = netloc[1:end], netloc[end + 1 :]
        try:
            if end < 0 or "%" in host:
                raise ValueError(host)
            host = ipaddress.IPv6Address(host).compressed
        except ValueError as exc:
            raise UrlRefused(f"not an IPv6 address in brackets: {url[:200]!r}") from exc
    else:
        host, colon, port_text = netloc.partition(":")
        rest = colon + port_text
        host = host.lower()
        if not _HOST_RE.fullmatch(host) or ".." in host:
            raise UrlRefused(f"not a host name or address: {host[:100]!r} in {url[:200]!r}")
    if not rest:
        return host, DEFAULT_PORTS[scheme]
    port_text = rest[1:] if rest.startswith(":") else None
    if port_text is None or not re.fullmatch(r"[0-9]{1,5}", port_text):
        raise UrlRefused(f"not a port: {rest[:20]!r} in {url[:200]!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise UrlRefused(f"port {port} out of range in {url[:200]!r}")
    return host, port


def parse_url(url: Any) -> Target:
    """The target of an absolute http(s) URL; UrlRefused for anything ambiguous or other."""
    if not isinstance(url, str):
        raise UrlRefused(f"not a URL: {url!r:.80}")
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"URL of {len(url)} characters, over {MAX_URL_LENGTH}")
    if _CONTROL_RE.search(url):
        raise UrlRefused(f"control character in URL: {url[:200]!r}")
    if "\\" in url:
        raise UrlRefused(
            f"backslash in URL (HTTP clients disagree on what it means): {url[:200]!r}"
        )
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise UrlRefused(f"only http:// and https:// URLs are fetched: {url[:200]!r}")
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        raise UrlRefused(f"credentials (user@) in URL: {url[:200]!r}")
    if not netloc or " " in netloc:
        raise UrlRefused(f"no host in URL: {url[:200]!r}")
    host, port = _host_port(netloc, scheme, url)
    path = parts.path or "/"
    if not path.startswith("/"):
        raise UrlRefused(f"path does not start with '/': {url[:200]!r}")
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(Origin(scheme, host, port), path)


def origin_of(url: str) -> Origin:
    return parse_url(url).origin


def redirect_target(current: Target, location: Any) -> Target:
    """Where a redirect's `Location` (absolute or relative) points, parsed like any URL."""
    if not isinstance(location, str) or not location.strip():
        raise UrlRefused(f"redirect from {current.url[:200]} without a Location")
    if "\\" in location or _CONTROL_RE.search(location):
        raise UrlRefused(f"redirect to an ambiguous Location: {location[:200]!r}")
    return parse_url(urljoin(current.url, location))


def parse_allowed_host(entry: str) -> tuple[bool, str, int | None]:
    """(wildcard, host, port or None) of a CLIPSEG_ALLOWED_HOSTS entry: `host`, `host:port`,
    `*.domain` (its subdomains, not the domain itself), `[v6]` or `[v6]:port`."""
    text = entry.strip().lower()
    wildcard = text.startswith("*.")
    if wildcard:
        text = text[2:]
    has_port = re.search(r":[0-9]+$", text) is not None and (
        not text.startswith("[") or "]:" in text
    )
    host, port = _host_port(text, "http", entry)
    return wildcard, host, port if has_port else None


def host_allowed(origin: Origin, entries: Iterable[str]) -> bool:
    """Whether `origin` matches one of CLIPSEG_ALLOWED_HOSTS' entries (any scheme)."""
    for entry in entries:
        try:
            wildcard, host, port = parse_allowed_host(entry)
        except UrlRefused:
            continue  # Settings refuses such entries at start
        if port is not None and port != origin.port:
            continue
        if origin.host.endswith("." + host) if wildcard else origin.host == host:
            return True
    return False


def _connects_to(url: str) -> set[tuple[str, str, int]]:
    """(scheme, host, port) as urllib3 (which connects), urllib.parse and `parse_url` read it."""
    readings = set()
    u3 = urllib3.util.parse_url(url)
    scheme = (u3.scheme or "").lower()
    readings.add(
        (scheme, (u3.host or "").strip("[]").lower(), u3.port or DEFAULT_PORTS.get(scheme, 0))
    )
    std = urlsplit(url)
    try:
        std_port = std.port
    except ValueError:
        std_port = -1
    scheme = std.scheme.lower()
    readings.add((scheme, (std.hostname or "").lower(), std_port or DEFAULT_PORTS.get(scheme, 0)))
    origin = parse_url(url).origin
    readings.add((origin.scheme, origin.host, origin.port))
    return readings


def _no_netrc(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An auth hook that adds nothing: with it `requests` does not look in ~/.netrc."""
    return request


def send(
    session: requests.Session,
    method: str,
    target: Target,
    *,
    headers: Mapping[str, str] | None = None,
    credentials: bool = False,
    timeout: float,
    stream: bool = False,
    params: Mapping[str, Any] | None = None,
    json: Any = None,
) -> requests.Response:
    """Send one request to exactly `target`, never following a redirect.

    `credentials`: the target is Label Studio's origin, so `headers` may carry its
    Authorization; otherwise any Authorization header is dropped. Raises UrlRefused when the
    prepared request would connect anywhere else (it cannot for a `parse_url` target; checked
    all the same, as the HTTP client's own reading is what matters), and requests' exceptions.
    """
    request = requests.Request(
        method, target.url, headers=dict(headers or {}), params=params, json=json, auth=_no_netrc
    )
    prepared = session.prepare_request(request)
    want = (target.origin.scheme, target.origin.host, target.origin.port)
    try:
        readings = _connects_to(prepared.url or "")
    except UrlRefused as exc:
        raise UrlRefused(f"the prepared request is not a plain URL: {exc}") from exc
    if readings != {want}:
        raise UrlRefused(f"the prepared request for {target.url[:200]} would connect elsewhere")
    if not credentials:
        prepared.headers.pop("Authorization", None)
    env = session.merge_environment_settings(prepared.url, {}, stream, None, None)
    return session.send(prepared, allow_redirects=False, timeout=timeout, **env)


__all__ = [
    "DEFAULT_PORTS",
    "Origin",
    "Target",
    "UrlRefused",
    "host_allowed",
    "parse_allowed_host",
    "origin_of",
    "parse_url",
    "redirect_target",
    "send",
]
