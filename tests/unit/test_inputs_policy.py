"""The input URL policy and file-name rules, without any server."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from comfy_worker.errors import InputRejected
from comfy_worker.inputs import decode_base64_input, safe_filename
from comfy_worker.urlpolicy import address_problem, display_url, host_allowlisted, prepare_request


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.8.9.10", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("100.64.0.1", "a private address"),  # carrier-grade NAT
        ("fc00::1", "a private address"),
        ("169.254.10.10", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("::ffff:169.254.169.254", "a cloud metadata address"),
        ("::ffff:10.0.0.1", "a private address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("240.0.0.1", "a reserved address"),
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_problem(address: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(address)) == problem


@given(st.ip_addresses())
def test_every_address_is_either_global_or_named(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    problem = address_problem(ip)
    target = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    if problem is None:
        assert target.is_global
        assert not target.is_multicast
    else:
        assert problem.startswith(("a ", "an "))


@pytest.mark.parametrize(
    ("host", "allowlist", "allowed"),
    [
        ("cdn.example.com", ("cdn.example.com",), True),
        ("CDN.Example.com.", ("cdn.example.com",), True),
        ("cdn.example.com", ("example.com",), False),
        ("a.cdn.example.com", ("*.example.com",), True),
        ("a.cdn.example.com", (".example.com",), True),
        ("example.com", ("*.example.com",), False),
        ("evilexample.com", ("*.example.com",), False),
        ("10.0.0.5", ("10.0.0.5",), True),
        ("::1", ("[::1]",), True),
        ("minio", (), False),
        ("minio", ("", " "), False),
    ],
)
def test_host_allowlisted(host: str, allowlist: tuple[str, ...], allowed: bool) -> None:
    assert host_allowlisted(host, allowlist) is allowed


@pytest.mark.parametrize(
    ("host", "port", "allowlist", "allowed"),
    [
        ("hooks.internal", 8443, ("hooks.internal:8443",), True),
        ("hooks.internal", 22, ("hooks.internal:8443",), False),  # a port entry opens that port only
        ("hooks.internal", 22, ("hooks.internal",), True),  # no port: every port, as before
        ("a.hooks.internal", 443, ("*.hooks.internal:443",), True),
        ("a.hooks.internal", 80, ("*.hooks.internal:443",), False),
        ("fd00::5", 8443, ("[fd00::5]:8443",), True),
        ("fd00::5", 80, ("[fd00::5]:8443",), False),
        ("fd00::5", 80, ("fd00::5",), True),  # a bare IPv6 address has no port
        ("::1", 80, ("[::1]",), True),
    ],
)
def test_host_allowlisted_port(host: str, port: int, allowlist: tuple[str, ...], allowed: bool) -> None:
    assert host_allowlisted(host, allowlist, port) is allowed


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("clip.mp4", "clip.mp4"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\win.ini", "win.ini"),
        ("my video (1).mp4", "my_video_1_.mp4"),
        (".hidden", "hidden"),
        ("", "input"),
        (None, "input"),
        ("..", "input"),
        ("ünïcode.png", "n_code.png"),
        ("a" * 300 + ".webm", "a" * 145 + ".webm"),
    ],
)
def test_safe_filename(name: str | None, safe: str) -> None:
    assert safe_filename(name) == safe


@given(st.text())
def test_safe_filename_is_always_one_harmless_component(name: str) -> None:
    out = safe_filename(name)
    assert out and len(out) <= 150
    assert "/" not in out and "\\" not in out
    assert not out.startswith(".")
    assert out not in ("..", ".")


def test_display_url_drops_tokens_and_credentials() -> None:
    assert display_url("https://user:pw@host.io/a/b.mp4?token=xyz#f") == "https://host.io/a/b.mp4"


async def test_prepare_request_pins_a_public_address() -> None:
    target, headers, ext = await prepare_request(
        "https://8.8.8.8:8443/v.mp4?x=1", allowlist=(), allow_private=False
    )
    assert str(target) == "https://8.8.8.8:8443/v.mp4?x=1"
    assert headers == {"Host": "8.8.8.8:8443", "Connection": "close"}
    assert ext == {"sni_hostname": "8.8.8.8"}


async def test_prepare_request_refuses_localhost_by_name() -> None:
    with pytest.raises(InputRejected, match=r"resolves to (127\.0\.0\.1|::1), a loopback address"):
        await prepare_request("http://localhost:8188/view", allowlist=(), allow_private=False)


async def test_allowlist_port_entry_opens_that_port_only() -> None:
    allow = ("localhost:8188",)
    target, _, _ = await prepare_request("http://localhost:8188/view", allowlist=allow, allow_private=False)
    assert target.port == 8188
    with pytest.raises(InputRejected, match="a loopback address"):
        await prepare_request("http://localhost:6379/", allowlist=allow, allow_private=False)
    with pytest.raises(InputRejected, match="a loopback address"):  # the scheme's default port is the port
        await prepare_request("http://localhost/", allowlist=allow, allow_private=False)


async def test_metadata_stays_refused_with_allow_private() -> None:
    with pytest.raises(InputRejected, match="a cloud metadata address; add the host to INPUT_URL_ALLOWLIST"):
        await prepare_request("http://169.254.169.254/latest/meta-data/", allowlist=(), allow_private=True)
    target, _, _ = await prepare_request(
        "http://169.254.169.254/latest/", allowlist=("169.254.169.254",), allow_private=False
    )
    assert target.host == "169.254.169.254"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://x/", "http:///nohost", "//x.com/a"])
async def test_prepare_request_refuses_other_schemes_and_hostless(url: str) -> None:
    with pytest.raises(InputRejected):
        await prepare_request(url, allowlist=(), allow_private=True)


def test_decode_base64_input(tmp_path: Path) -> None:
    data = b"\x89PNG fake image bytes"
    out = decode_base64_input(base64.b64encode(data).decode(), tmp_path / "in", "../pic.png", 1000)
    assert out == tmp_path / "in" / "pic.png"
    assert out.read_bytes() == data
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert decode_base64_input(uri, tmp_path, "b.png", 1000).read_bytes() == data


def test_decode_base64_input_refuses_oversize_before_decoding(tmp_path: Path) -> None:
    big = base64.b64encode(b"x" * 5000).decode()
    with pytest.raises(InputRejected, match=r"over INPUT_MAX_BYTES \(1000\)"):
        decode_base64_input(big, tmp_path, "a.bin", 1000)
    assert list(tmp_path.iterdir()) == []


def test_decode_base64_input_refuses_garbage(tmp_path: Path) -> None:
    with pytest.raises(InputRejected, match="not valid base64"):
        decode_base64_input("@@@not base64@@@", tmp_path, "a.bin", 1000)
