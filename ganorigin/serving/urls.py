"""Fetch an image from a URL a user gave, without letting that URL reach into the server's network.

A URL from a user is a request the server makes on their behalf (server-side request forgery, SSRF).
:func:`fetch_image_bytes` fetches it only under these rules:

- ``http`` or ``https``, no credentials in the URL, no proxy from the environment;
- only public addresses: a host whose name resolves to any loopback, private, link-local (cloud
  metadata at 169.254.169.254), shared (100.64/10), multicast, reserved or unspecified address, or a
  known metadata address, is refused. IPv6 forms that carry an IPv4 address (IPv4-mapped, 6to4,
  Teredo, NAT64) are judged by that address. The check runs where the connection is made, on the
  resolved addresses, and the socket connects to the address that was checked: a DNS answer that
  changes between check and connect (DNS rebinding) cannot slip through;
- at most :data:`MAX_REDIRECTS` redirects, each one checked the same way;
- a deadline per connect and per read, and one for the whole fetch, so a server that sends a byte
  now and then (a slow drip) is cut off;
- no more than the upload limit (:data:`ganorigin.images.MAX_IMAGE_BYTES`): refused on a declared
  ``Content-Length`` before the body is read, and cut off as soon as the body passes it;
- an ``image/*`` content type.

The bytes then go through the same decoding gate as an upload. Every refusal is a
:class:`URLFetchError` (an :class:`~ganorigin.errors.InvalidImageError`) with one human sentence.

Tests only: ``GANORIGIN_ALLOW_LOOPBACK_URLS=1`` lets loopback addresses (127.0.0.0/8, ::1) through, so
a test can serve images from a local server. Every other rule still holds. Never set it on a server.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from typing import Optional

import httpcore
import httpx

from ..errors import ImageTooLargeError, InvalidImageError
from ..images import MAX_IMAGE_BYTES

MAX_REDIRECTS = 3
TIMEOUT_S = float(os.environ.get("GANORIGIN_URL_TIMEOUT", 10))  # per connect, per read
DEADLINE_S = float(os.environ.get("GANORIGIN_URL_DEADLINE", 30))  # the whole fetch, redirects included
ALLOW_LOOPBACK_ENV = "GANORIGIN_ALLOW_LOOPBACK_URLS"
# Public addresses that answer as cloud metadata services (Azure's wire server, Alibaba's metadata;
# AWS's IPv6 one is private anyway, listed for the record).
METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, ("169.254.169.254", "168.63.129.16", "100.100.100.200",
                                                          "fd00:ec2::254")))
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# identity: the body is the image file itself, so the byte limit counts its real bytes.
HEADERS = {"User-Agent": "GANOrigin image fetcher", "Accept": "image/*", "Accept-Encoding": "identity"}


class URLFetchError(InvalidImageError):
    """An image URL that is refused or cannot be fetched; the message says why, for a person."""


def fetch_image_bytes(url: str, *, max_bytes: int = MAX_IMAGE_BYTES, timeout: float = TIMEOUT_S,
                      deadline: float = DEADLINE_S) -> bytes:
    """The body of the image at ``url``, fetched under the rules above.

    Raises:
        URLFetchError: the URL is refused, the fetch failed, or the answer is not an image.
        ImageTooLargeError: the body is over ``max_bytes``.
    """
    url = _checked_url(url)
    ends_at = time.monotonic() + deadline
    with httpx.Client(transport=_PublicOnlyTransport(), timeout=httpx.Timeout(timeout), trust_env=False,
                      follow_redirects=False, headers=HEADERS) as client:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = _checked_url(str(response.url.join(response.headers["location"])))
                        continue
                    return _image_body(response, max_bytes, ends_at, deadline)
            except httpx.TimeoutException as e:
                raise URLFetchError(f"{_host(url)} did not answer within {timeout:g} s.") from e
            except httpx.HTTPError as e:
                raise URLFetchError(f"The image could not be downloaded from {_host(url)} ({_reason(e)}).") from e
    raise URLFetchError(f"The address redirected more than {MAX_REDIRECTS} times; give the image's own address.")


def _checked_url(url: str) -> httpx.URL:
    """``url`` parsed, if it is an http(s) URL with a host and no credentials."""
    text = str(url).strip()
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise URLFetchError("This is not a valid web address; give an http:// or https:// image URL.") from None
    if parsed.scheme not in ("http", "https"):
        raise URLFetchError("Only http:// and https:// image addresses can be fetched.")
    if not parsed.host:
        raise URLFetchError("This is not a valid web address; give an http:// or https:// image URL.")
    if parsed.userinfo:
        raise URLFetchError("Image addresses with a user name or password are not fetched.")
    return parsed


def _image_body(response: httpx.Response, max_bytes: int, ends_at: float, deadline: float) -> bytes:
    host = _host(response.url)
    if response.status_code != 200:
        raise URLFetchError(f"{host} answered HTTP {response.status_code} {response.reason_phrase}, not an image.")
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not kind.startswith("image/"):
        raise URLFetchError(f"{host} sent {kind or 'something without a content type'}, not an image.")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise URLFetchError(f"{host} sent the image {encoding}-compressed, which is not fetched.")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageTooLargeError(_too_large(max_bytes))
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > max_bytes:
            raise ImageTooLargeError(_too_large(max_bytes))
        if time.monotonic() > ends_at:
            raise URLFetchError(f"Downloading the image from {host} took longer than {deadline:g} s.")
    if not body:
        raise URLFetchError(f"{host} sent an empty answer, not an image.")
    return bytes(body)


def refusal(address: str) -> Optional[str]:
    """Why the server must not connect to IP ``address``, or None if it is a public address."""
    ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 zone (fe80::1%eth0) is link-local anyway
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return refusal(str(embedded))
    if ip.is_loopback:
        return None if os.environ.get(ALLOW_LOOPBACK_ENV) == "1" else "a loopback address (this server itself)"
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved or ip.is_link_local or ip.is_private:
        return "a private, local or reserved address"
    if not ip.is_global:
        return "an address that is not public"
    return None


class _PublicOnlyBackend(httpcore.SyncBackend):
    """Resolves the host itself, refuses it unless every address is public, and connects to a checked address."""

    def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None, local_address: Optional[str] = None,
                    socket_options=None) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise URLFetchError(f"The host name {host} could not be resolved.") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            if why := refusal(address):
                raise URLFetchError(f"{host} points to {why}; only public addresses are fetched.")
        error: Exception = URLFetchError(f"The host name {host} has no address.")
        for address in addresses:  # connect to the very address that was checked, never resolve again
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        raise error


class _PublicOnlyTransport(httpx.HTTPTransport):
    """httpx's transport over :class:`_PublicOnlyBackend`; TLS still checks the certificate against the host name.

    httpx 0.28 (pinned) takes no network backend, so the connection pool is built here with one.
    """

    def __init__(self):
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), max_connections=1,
                                             network_backend=_PublicOnlyBackend())


def _host(url) -> str:
    return httpx.URL(str(url)).host or "the server"


def _reason(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.ConnectError):
        return "could not connect"
    if isinstance(error, httpx.RemoteProtocolError):
        return "the server broke the connection"
    return type(error).__name__


def _too_large(max_bytes: int) -> str:
    return f"The image at this address is larger than the {max_bytes / 2**20:g} MiB limit."
