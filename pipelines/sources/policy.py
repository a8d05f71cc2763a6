"""Which item ``source`` URIs may be stored and read back: one policy for the API and read-back.

A memory remembers where each image came from (``source``). The HTTP API lets a client store a
``source`` with an item (``POST /v1/memory/items``), and evidence galleries read sources back
server-side (``pipelines.sources.fetch.read_sources``): without a policy, that is a server-side
request forgery (``http://127.0.0.1/...``, ``http://169.254.169.254/...``) and a local file read
(``file:///etc/...``). The rule, in one place:

- ``""`` (no source) and the synthetic ``api:<key>`` form are always accepted; they are never
  dereferenced.
- Anything else must lie under one of the configured **roots** (URL prefixes, compared by
  scheme, host, port and whole path segments, never as raw strings): ``gs://bucket/images/``,
  ``/data/imagenet/``, ``https://images.example.com/public/``. No roots configured: nothing else.
- A local file (a path or ``file://``) is refused unless a root names its directory.
- A host that is loopback, link-local, private, unspecified, multicast, reserved or otherwise not
  globally routable (literal IPs in any spelling, ``localhost``, and, under a scheme-wide root
  such as ``https://``, any name that resolves to one) is refused unless a root names that host.
- Never: relative paths, ``.``/``..`` segments (also percent-encoded), user info
  (``user@host``), chained fsspec URLs (``a::b``), control characters, or a scheme without
  ``//`` (``data:``, ``javascript:``).

No torch, no Beam, no network at import: the router imports it.
"""
from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from pipelines.sources.urls import expand_braces

SYNTHETIC_PREFIX = "api:"  # the source the API records for an item given without one
LOCAL_SCHEMES = frozenset({"file", "local"})
NETWORK_SCHEMES = frozenset({"http", "https", "ftp", "sftp", "ssh", "smb", "webdav", "dav"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "sftp": 22, "ssh": 22, "smb": 445}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NUMERIC_HOST = re.compile(r"^[0-9a-fx.]+$")  # legacy IPv4 spellings: 127.1, 0x7f.1, 2130706433

Resolver = Callable[[str], list[str]]


class SourceRefused(ValueError):
    """A source the policy refuses; ``source`` is the URI, ``reason`` says why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"source {source!r} refused: {reason}")
        self.source, self.reason = source, reason


def resolve_host(host: str) -> list[str]:
    """Every address ``host`` resolves to (``socket.getaddrinfo``); raises OSError if none."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)})


@dataclass(frozen=True)
class Location:
    """A URI in comparable form: lower-case scheme (``file`` for local paths), lower-case host
    (``None`` when the URI names none, e.g. a scheme-wide root ``https://``), port, and the
    path as a tuple of non-empty segments (percent-decoded)."""

    scheme: str
    host: str | None
    port: int | None
    segments: tuple[str, ...]

    def covers(self, other: Location) -> bool:
        """Whether ``other`` lies under this root: same scheme, then (unless this root names no
        host) the same host and port, then this root's path segments as a prefix of other's."""
        if self.scheme != other.scheme:
            return False
        if self.host is not None and (self.host, self.port) != (other.host, other.port):
            return False
        return other.segments[:len(self.segments)] == self.segments


def parse_location(uri: str) -> Location:
    """``uri`` (an absolute local path or ``scheme://...``; for a ``container#member`` source pass
    the container) as a ``Location``. Raises SourceRefused for anything malformed or ambiguous
    (see the module docstring)."""
    if not uri:
        raise SourceRefused(uri, "empty")
    if _CONTROL.search(uri):
        raise SourceRefused(uri, "control characters")
    if "::" in re.sub(r"\[[^\]]*\]", "", uri):  # "::" outside an IPv6 literal's brackets
        raise SourceRefused(uri, "chained URLs (a::b) are not allowed")
    if "\\" in uri:
        raise SourceRefused(uri, "backslashes are not allowed")
    if uri.startswith("/"):
        return Location("file", None, None, _segments(uri, uri, decode=False))
    if "://" not in uri:
        if _SCHEME.match(uri):
            raise SourceRefused(uri, f"scheme {uri.split(':', 1)[0]!r} without '//' is not a storage URL")
        raise SourceRefused(uri, "a relative path (give an absolute path or a URL)")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not scheme:
        raise SourceRefused(uri, "no scheme")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise SourceRefused(uri, "user info in the URL (user@host) is not allowed")
    try:
        port = parts.port
    except ValueError as error:
        raise SourceRefused(uri, f"bad port: {error}") from error
    host = parts.hostname.rstrip(".") if parts.hostname else None
    if scheme in LOCAL_SCHEMES:
        if host not in (None, "", "localhost") or port is not None:
            raise SourceRefused(uri, "a file URL must not name a remote host")
        if scheme == "local":
            scheme = "file"
        host = None
    host = host or None
    if host is not None and port is None:
        port = DEFAULT_PORTS.get(scheme)
    # http: the path is what the server sees (percent-decoded); elsewhere the key is literal
    decode = scheme in NETWORK_SCHEMES
    return Location(scheme, host, port, _segments(uri, parts.path, decode))


def _segments(uri: str, path: str, decode: bool) -> tuple[str, ...]:
    segments = [unquote(s) if decode else s for s in path.split("/")]
    if any(s in (".", "..") for s in segments) or (decode and any("/" in s or "\\" in s for s in segments)):
        raise SourceRefused(uri, "'.' or '..' path segments are not allowed")
    return tuple(s for s in segments if s)


def non_public_reason(host: str, resolver: Resolver | None = None) -> str | None:
    """Why ``host`` must not be contacted (``"loopback"``, ``"link-local"``, ``"private"``,
    ``"unspecified"``, ``"multicast"``, ``"reserved"``, ``"not globally routable"``,
    ``"unresolvable"``), or None for a public host. Literal IPs in any spelling (IPv6 with
    IPv4-mapped or 6to4 forms, legacy IPv4 such as ``127.1`` or ``2130706433``) and
    ``localhost`` are judged without DNS; other names only when a ``resolver`` is given (every
    address it returns must be public)."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return "loopback"
    address = _ip_literal(name)
    if address is not None:
        return _address_reason(address)
    if resolver is None:
        return None
    try:
        addresses = resolver(name)
    except OSError:
        return "unresolvable"
    if not addresses:
        return "unresolvable"
    for text in addresses:
        reason = _address_reason(ipaddress.ip_address(text.split("%", 1)[0]))
        if reason:
            return f"{reason} (resolves to {text})"
    return None


def _ip_literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host name spells literally (standard or legacy IPv4 forms), else None."""
    try:
        return ipaddress.ip_address(name.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:  # not a standard literal: try the legacy IPv4 spellings
        return _legacy_ipv4(name)


def _legacy_ipv4(name: str) -> ipaddress.IPv4Address | None:
    """What the resolver makes of a numeric host like ``127.1`` or ``2130706433`` (inet_aton
    accepts every legacy spelling); None when it is not one."""
    if not _NUMERIC_HOST.match(name):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:  # numeric-looking but not an address inet_aton accepts: a host name
        return None


def _address_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None:
            reason = _address_reason(embedded)
            if reason:
                return reason
    for name in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    if not address.is_global:
        return "not globally routable"
    return None


def is_synthetic(source: str) -> bool:
    """No source, or the API's ``api:<key>``: accepted, never dereferenced."""
    return source == "" or (source.startswith(SYNTHETIC_PREFIX) and "://" not in source)


def container_of(source: str) -> str:
    """``container#member`` -> container (what is actually opened); a plain URI -> itself."""
    return source.partition("#")[0]


class SourcePolicy:
    """The allowed roots and the check. ``roots``: URL prefixes or absolute local paths (each
    validated: a bad root raises ValueError at construction, i.e. at deploy time). ``resolver``
    (default: DNS via ``socket.getaddrinfo``) is consulted only for a host under a scheme-wide
    root (``https://``); ``None`` turns DNS checks off (literal IPs and localhost are still
    judged)."""

    def __init__(self, roots: Iterable[str] = (), resolver: Resolver | None = resolve_host) -> None:
        self.roots: tuple[str, ...] = tuple(roots)
        self.resolver = resolver
        self._parsed: list[Location] = []
        for root in self.roots:
            if not isinstance(root, str) or not root:
                raise ValueError(f"allowed source root {root!r}: expected a non-empty URL prefix")
            if "#" in root or "?" in root:
                raise ValueError(f"allowed source root {root!r}: no '#' or '?' in a root")
            try:
                self._parsed.append(parse_location(root))
            except SourceRefused as error:
                raise ValueError(f"allowed source root {root!r}: {error.reason}") from None

    def __repr__(self) -> str:
        return f"SourcePolicy({list(self.roots)!r})"

    def check(self, source: str) -> None:
        """Accept ``source`` (return None) or raise SourceRefused. ``""`` and ``api:<key>`` pass;
        any other URI must pass ``check_url``."""
        if not is_synthetic(source):
            self.check_url(source)

    def check_url(self, source: str) -> None:
        """Accept a URI that may be opened (its container, for ``container#member``) or raise
        SourceRefused naming the reason."""
        location = parse_location(container_of(source))
        root = next((r for r in self._parsed if r.covers(location)), None)
        if location.host is not None and (root is None or root.host is None):
            # nobody named this host: it must be public (DNS only for a network host under a
            # scheme-wide root; a bucket name is not a host name)
            network = root is not None and location.scheme in NETWORK_SCHEMES
            reason = non_public_reason(location.host, self.resolver if network else None)
            if reason:
                raise SourceRefused(source, f"host {location.host} is {reason}; refused unless an "
                                            "allowed source root names it")
        if root is None:
            if location.scheme == "file":
                raise SourceRefused(source, "local files are refused unless an allowed source root "
                                            "names their directory")
            raise SourceRefused(source, "not under an allowed source root "
                                        f"({', '.join(self.roots) if self.roots else 'none configured'})")

    def allows(self, source: str) -> bool:
        """``check`` as a boolean."""
        try:
            self.check(source)
        except SourceRefused:
            return False
        return True


def input_roots(patterns: Iterable[str]) -> list[str]:
    """The roots that cover what ingest patterns (a batch manifest's ``inputs``) can match: each
    brace alternative up to its first glob character, cut back to a whole path segment
    (``/data/shards/train-{000..009}.tar`` -> ``/data/shards``; a plain file or folder -> itself).
    A relative local pattern is taken relative to the current directory, as ingest took it."""
    roots: list[str] = []
    for pattern in patterns:
        for candidate in expand_braces(pattern):
            cut = min((candidate.find(c) for c in "*?[" if c in candidate), default=-1)
            if cut >= 0:
                candidate = posixpath.dirname(candidate[:cut])
            if "://" not in candidate:
                candidate = os.path.abspath(candidate or ".")
            if candidate not in roots:
                roots.append(candidate)
    return roots
