"""SSRF guard for provider endpoints: https only, public addresses only, pinned.

`endpoint_check(url)` parses the URL, refuses anything but https (http only for hosts that
operators list in PROVIDER_ALLOWED_HOSTS, as "host" or "host:port"), resolves the host and
refuses it when any address it resolves to is loopback, private, link-local, multicast,
reserved, unspecified or otherwise not globally routable (IPv4-mapped, 6to4 and NAT64 IPv6
addresses are judged by the IPv4 address inside). It returns a `Target` that names the one
checked address to connect to: the client connects to that address (keeping the hostname
for the Host header, SNI and certificate checks), so a DNS answer that changes between the
check and the connect (DNS rebinding) cannot move the call to another address. It runs at
save time and again before every call. Redirects are never followed (providers/clients.py).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EndpointRefused(ValueError):
    """The endpoint may not be called; str(exc) says why (safe to show the tenant)."""


@dataclass(frozen=True)
class Target:
    url: str  # as configured
    scheme: str
    host: str  # hostname as written (lower case, no brackets)
    port: int
    address: str  # the checked IP to connect to
    allowlisted: bool

    def pinned_url(self) -> str:
        """The URL with the host replaced by the checked address (Host and SNI stay the hostname)."""
        parts = urlsplit(self.url)
        ip = f"[{self.address}]" if ":" in self.address else self.address
        netloc = f"{ip}:{self.port}"
        query = f"?{parts.query}" if parts.query else ""
        return f"{self.scheme}://{netloc}{parts.path or '/'}{query}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def extensions(self) -> dict[str, str]:
        """httpx request extensions for the pinned call: over https the TLS name (SNI) and the
        certificate check stay the hostname while the connection goes to `address`."""
        if self.scheme != "https":
            return {}
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return {"sni_hostname": self.host}
        return {}  # an IP literal has no name to send


def _allowlisted(host: str, port: int) -> bool:
    for entry in settings.PROVIDER_ALLOWED_HOSTS:
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry.startswith("["):  # [v6]:port or [v6]
            e_host, _, rest = entry[1:].partition("]")
            e_port = rest.lstrip(":")
        elif entry.count(":") == 1:
            e_host, e_port = entry.split(":")
        else:
            e_host, e_port = entry, ""
        if e_host == host and (not e_port or e_port == str(port)):
            return True
    return False


def address_refusal(address: str) -> str | None:
    """Why this IP may not be called (None when it is a public address)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"resolves to {address!r}, which is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            why = address_refusal(str(inner))
            return f"resolves to {ip}, which embeds {inner}: {why.split(': ', 1)[-1]}" if why else None
    for flag, kind in (
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"),
        ("is_unspecified", "an unspecified"),
        ("is_multicast", "a multicast"),
        ("is_reserved", "a reserved"),
        ("is_private", "a private"),
    ):
        if getattr(ip, flag):
            return f"resolves to {ip}: {kind} address"
    if not ip.is_global:
        return f"resolves to {ip}: not a public address"
    return None


def _resolve(host: str, port: int) -> list[str]:
    """Every address of host (IPv4 and IPv6). Tests patch this to simulate DNS."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def endpoint_parse(url: str) -> tuple[str, str, int, bool]:
    """(scheme, host, port, allowlisted) of a syntactically acceptable endpoint; raises EndpointRefused."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise EndpointRefused("must be an absolute https URL")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise EndpointRefused("may not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise EndpointRefused(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    if scheme not in ("http", "https") or not host:
        raise EndpointRefused("must be an absolute https URL")
    if parts.username is not None or parts.password is not None:
        raise EndpointRefused("may not contain credentials (user:password@); use headers")
    if parts.fragment:
        raise EndpointRefused("may not contain a #fragment")
    port = port or (443 if scheme == "https" else 80)
    allowlisted = _allowlisted(host, port)
    if scheme == "http" and not allowlisted:
        raise EndpointRefused("must use https (http only for hosts in PROVIDER_ALLOWED_HOSTS)")
    return scheme, host, port, allowlisted


def endpoint_check(url: str) -> Target:
    """Parses, resolves and checks `url`; returns the Target to connect to.

    Raises EndpointRefused with a message fit for the tenant (it names the address, which
    the tenant's own DNS told us, and nothing about our network).
    """
    scheme, host, port, allowlisted = endpoint_parse(url)
    try:
        addresses = _resolve(host, port)
    except (OSError, UnicodeError):
        raise EndpointRefused(f"host {host!r} does not resolve") from None
    if not addresses:
        raise EndpointRefused(f"host {host!r} does not resolve")
    if not allowlisted:
        for address in addresses:
            why = address_refusal(address)
            if why:
                raise EndpointRefused(f"host {host!r} {why}")
    return Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0], allowlisted=allowlisted)
