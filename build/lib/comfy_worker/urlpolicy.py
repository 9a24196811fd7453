"""Which outbound URLs the worker may reach: the server-side request forgery policy, shared by input
downloads (:mod:`comfy_worker.inputs`) and webhook deliveries (:mod:`comfy_worker.webhooks`).

Before connecting, the host is resolved and every address it resolves to must be public (not loopback,
private, link-local, multicast, reserved, CGNAT or a cloud metadata endpoint), unless the host is in the
caller's allow-list or private addresses are allowed. The connection is then made to the address that was
checked (the original host name goes in the Host header and TLS SNI), so a DNS answer that changes between
check and connect cannot redirect us. Cloud metadata addresses (169.254.169.254, fd00:ec2::254,
100.100.100.200) stay refused even with private addresses allowed: only an explicit allow-list entry opens them.
Only http and https are allowed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from comfy_worker.errors import ComfyWorkerError, InputRejected, InputUnavailable

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class UrlPolicy:
    """Who uses the policy, for messages and errors: ``what`` names the URL ("input URL", "webhook URL"),
    ``allowlist_var`` the setting that opens a host, ``private_var`` the one that opens private addresses (if
    any), ``rejected`` / ``unavailable`` the exceptions for a refused URL and for a name that cannot be
    resolved right now."""

    what: str = "input URL"
    allowlist_var: str = "INPUT_URL_ALLOWLIST"
    schemes: str = "http, https, s3, gs or az"  # what the message offers (s3/gs/az never reach this check)
    rejected: type[ComfyWorkerError] = InputRejected
    unavailable: type[ComfyWorkerError] = InputUnavailable
    private_var: str | None = "ALLOW_PRIVATE_URLS"  # the setting that opens private addresses; None: only the list

    @property
    def fix_hint(self) -> str:
        if self.private_var is None:
            return f"add the host to {self.allowlist_var}"
        return f"set {self.private_var}=true or add the host to {self.allowlist_var}"


INPUT_POLICY = UrlPolicy()


def address_problem(ip: IPAddress) -> str | None:
    """Why an outbound URL may not reach this address (``"a loopback address"``, …), or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private or not ip.is_global:
        return "a private address"
    return None


def _split_entry(entry: str) -> tuple[str, int | None]:
    """An allow-list entry as (host, port or None): ``host``, ``host:8443``, ``[::1]``, ``[::1]:8443``, ``::1``."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:  # a name, or a bare IPv6 address
        host, port = entry, ""
    return host.rstrip("."), int(port) if port.isdigit() else None


def host_allowlisted(host: str, allowlist: tuple[str, ...], port: int | None = None) -> bool:
    """True when ``host`` (and ``port``) match an allow-list entry: an exact host name or address, or
    ``*.example.com`` / ``.example.com`` for every subdomain of example.com; an entry with a port
    (``hooks.internal:8443``, ``[fd00::5]:8443``) opens that port only, one without opens every port."""
    host = host.lower().rstrip(".").strip("[]")
    for raw in allowlist:
        entry, entry_port = _split_entry(raw)
        if not entry or (entry_port is not None and entry_port != port):
            continue
        if entry.startswith(("*.", ".")):
            suffix = entry[entry.index(".") :]
            if host.endswith(suffix) and len(host) > len(suffix):
                return True
        elif host == entry:
            return True
    return False


def display_url(url: str) -> str:
    """The URL without query or fragment (signed URLs carry tokens there): fit for messages and logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


async def resolve(host: str, port: int, policy: UrlPolicy = INPUT_POLICY) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:
            raise policy.rejected(f"{policy.what} host {host!r} does not resolve (no such name)") from exc
        raise policy.unavailable(f"could not resolve {policy.what} host {host!r}: {exc.strerror}") from exc
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


async def prepare_request(
    url: str, *, allowlist: tuple[str, ...], allow_private: bool, origin: str | None = None,
    policy: UrlPolicy = INPUT_POLICY,
) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """Check one URL against the policy and return (URL to connect to, extra headers, httpx extensions).

    For hosts that are checked, the returned URL names the vetted IP address and the headers/extensions
    carry the real host name (Host, TLS SNI). ``origin`` is the URL that redirected here, for messages."""
    what = policy.what
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise policy.rejected(f"{what} {url!r} is not a valid URL: {exc}") from exc
    shown = display_url(url)
    via = f" (redirected from {display_url(origin)})" if origin else ""
    if parsed.scheme not in ("http", "https"):
        raise policy.rejected(f"{what} {shown}{via} must use {policy.schemes}, not {parsed.scheme or 'nothing'!r}")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise policy.rejected(f"{what} {shown}{via} has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if host_allowlisted(host, allowlist, port):
        return parsed, {}, {}
    addresses = await resolve(host, port, policy)
    if not addresses:
        raise policy.unavailable(f"{what} host {host!r} resolved to no addresses")
    for ip in addresses:
        problem = address_problem(ip)
        if problem is None:
            continue
        if allow_private and problem != "a cloud metadata address":
            continue
        hint = f"add the host to {policy.allowlist_var}" if problem == "a cloud metadata address" else policy.fix_hint
        raise policy.rejected(
            f"{what} {shown}{via} resolves to {ip}, {problem}; {hint}",
            details={"url": shown, "address": str(ip), "reason": problem},
        )
    if allow_private:
        return parsed, {}, {}  # anything but metadata is allowed: let httpx resolve (and fall back) itself
    pinned = parsed.copy_with(host=str(addresses[0]))
    headers = {"Host": parsed.netloc.decode("ascii")}
    extensions: dict[str, Any] = {}
    if parsed.scheme == "https":
        extensions["sni_hostname"] = host
        # the pool keys connections by IP: never reuse a TLS session verified for another host name
        headers["Connection"] = "close"
    return pinned, headers, extensions
