"""Pure ASGI middleware against DNS rebinding and cross-site requests: the Host header must name this server (the
loopback names, an IP address, or a configured host), and a browser's Origin must be this server's own or an
allowed one."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import response_for_scope
from server.exceptions import Forbidden, InvalidRequest, ServiceError

ANY = "*"
LOOPBACK_NAME = "localhost"
DEFAULT_PORTS = {"http": 80, "https": 443}
HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


class Authority(NamedTuple):
    host: str          # lower case, no trailing dot, IPv6 without brackets
    port: int | None


def parse_authority(text: str) -> Authority | None:
    """`host`, `host:port`, `[v6]` or `[v6]:port`, as a Host header or an origin's authority carries it."""
    text = text.strip().lower()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, colon, port_text_or_empty = text.partition(":")
        port_text = port_text_or_empty if colon else None
        host = host.removesuffix(".")
        if not host or not set(host) <= HOST_CHARACTERS:
            return None
    if port_text is None:
        return Authority(host, None)
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        return None
    return Authority(host, int(port_text))


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HostAllowList:
    """Loopback names and IP addresses always (a rebinding page can only make the browser send a name it controls),
    then the configured names: `*` any, `.example.com` that domain and its subdomains."""

    def __init__(self, configured: Iterable[str]) -> None:
        names = {name.strip().lower().removesuffix(".") for name in configured}
        self.any = ANY in names
        self.suffixes = tuple(name for name in names if name.startswith("."))
        self.names = names - set(self.suffixes)

    def allows(self, host: str) -> bool:
        return (self.any or host == LOOPBACK_NAME or host.endswith("." + LOOPBACK_NAME) or is_ip_address(host)
                or host in self.names or any(host.endswith(s) or host == s[1:] for s in self.suffixes))


class HostOriginMiddleware:
    """400 for a Host this server does not answer to; 403 for a request whose Origin is neither this server's own
    (the Host it names) nor in `allowed_origins` (the CORS origins: `*` any)."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], allowed_origins: Iterable[str]) -> None:
        self.app = app
        self.hosts = HostAllowList(allowed_hosts)
        origins = {origin.strip().lower().rstrip("/") for origin in allowed_origins}
        self.any_origin = ANY in origins
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host_header = origin = None
        for name, value in scope["headers"]:
            if name == b"host":
                host_header = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        try:
            authority = self.check_host(host_header)
            if origin is not None:
                self.check_origin(origin, authority)
        except ServiceError as exc:
            await response_for_scope(scope, exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def check_host(self, header: str | None) -> Authority | None:
        if header is None:  # HTTP/1.0 without Host: no browser sends that
            return None
        authority = parse_authority(header)
        if authority is None:
            if self.hosts.any:
                return None
            raise InvalidRequest("the Host header is malformed", param="Host")
        if not self.hosts.allows(authority.host):
            raise InvalidRequest(f"this server does not answer to the host {authority.host!r} (DNS rebinding is "
                                 "refused): add it to ALLOWED_HOSTS", param="Host")
        return authority

    def check_origin(self, origin: str, host: Authority | None) -> None:
        normalized = origin.strip().lower().rstrip("/")
        if self.any_origin or normalized in self.origins or same_origin(normalized, host):
            return
        raise Forbidden(f"requests from the origin {origin[:200]!r} are not allowed: only this server's own pages "
                        "and the origins in CORS_ALLOW_ORIGINS may call it from a browser (behind a proxy, forward "
                        "the Host header with its port)", param="Origin")


def same_origin(origin: str, host: Authority | None) -> bool:
    """The origin names the host and port the request was sent to (a Host without a port: the scheme's default)."""
    scheme, separator, rest = origin.partition("://")
    if host is None or not separator or scheme not in DEFAULT_PORTS:
        return False
    authority = parse_authority(rest)
    if authority is None:
        return False
    default = DEFAULT_PORTS[scheme]
    return authority.host == host.host and (authority.port or default) == (host.port or default)
