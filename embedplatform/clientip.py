"""The client's address, for every per-address limit (login, sign-up, admin login).

REMOTE_ADDR is the peer that connected to us. Only when that peer is one of TRUSTED_PROXIES
(settings: IPs or CIDRs) is X-Forwarded-For believed, and then only as far as the proxies
wrote it: the list is read right to left, skipping trusted proxies, and the first address that
is not one is the client. Everything left of it was sent by the client and may be forged, so
it is never used (a spoofed `X-Forwarded-For: 1.2.3.4` from a stranger changes nothing).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from django.http import HttpRequest
    from rest_framework.request import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=8)
def trusted_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """TRUSTED_PROXIES parsed; raises ValueError naming a bad entry (settings check it at start)."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"TRUSTED_PROXIES: `{entry}` is not an IP address or CIDR (e.g. 10.0.0.0/8)") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    """An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`; None if not one."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def client_ip(request: HttpRequest | Request) -> str:
    """The client's address as text, or "" when the server set no usable REMOTE_ADDR (a unix
    socket behind a proxy, some WSGI hosts): callers must give "" one shared bucket, not fail."""
    peer = _address(request.META.get("REMOTE_ADDR") or "")
    if peer is None:
        return ""
    networks = trusted_networks(tuple(getattr(settings, "TRUSTED_PROXIES", ())))
    if not networks or not _trusted(peer, networks):
        return str(peer)
    client = peer
    for entry in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        hop = _address(entry)
        if hop is None:
            break  # garbage where a proxy should have written an address: trust no further
        client = hop
        if not _trusted(hop, networks):
            break
    return str(client)


def client_ip_key(group: str | None, request: HttpRequest | Request) -> str:
    """A django-ratelimit `key` callable: the client's address, an IPv6 client by its /64 (one
    host usually holds a whole /64; RATELIMIT_IPV6_MASK and RATELIMIT_IPV4_MASK, as
    django-ratelimit's own "ip" key reads them)."""
    ip = client_ip(request)
    if not ip:
        return "no-remote-addr"
    v6 = ":" in ip
    mask = getattr(settings, "RATELIMIT_IPV6_MASK", 64) if v6 else getattr(settings, "RATELIMIT_IPV4_MASK", 32)
    return str(ipaddress.ip_network(f"{ip}/{mask}", strict=False).network_address)
