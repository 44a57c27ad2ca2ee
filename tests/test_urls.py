"""Fetching an image from a URL (``ganorigin.serving.urls``), against a real local HTTP server.

Proves that with the test-only switch on (``GANORIGIN_ALLOW_LOOPBACK_URLS=1``) an image is fetched
byte for byte, through up to 3 redirects; that with it off every loopback, private, link-local,
metadata, multicast, reserved and unspecified address is refused, in IPv4 and IPv6 forms (IPv4-mapped,
6to4, NAT64), also when a DNS name (``localhost``) resolves to it and when a redirect leads to it,
and the server is never contacted; that an endless body, a declared size over the limit, a slow drip,
a non-image content type, an error status and a 4th redirect are refused with one human sentence.
Through the app: REST ``POST /predict`` with ``url`` and gradio_client's ``/predict_url`` give the
library's JSON for the fetched bytes, and the same refusal messages as the library.
"""

from __future__ import annotations

import time

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from ganorigin import load_image
from ganorigin.errors import ImageTooLargeError, InvalidImageError
from ganorigin.serving.urls import ALLOW_LOOPBACK_ENV, MAX_REDIRECTS, URLFetchError, fetch_image_bytes, refusal

from app_server import assert_same_prediction
from batch_support import batch_server
from image_server import ImageServer


@pytest.fixture(scope="module")
def images():
    server = ImageServer().start()
    yield server
    server.stop()


@pytest.fixture
def loopback_allowed(monkeypatch):
    monkeypatch.setenv(ALLOW_LOOPBACK_ENV, "1")


@pytest.fixture
def face(dev_images, images):
    path = sorted(dev_images["stylegan2"])[0]
    return path, images.add(path)


def _served(images) -> list[str]:
    seen: list[str] = []
    images.on_request = seen.append
    return seen


def test_an_image_is_fetched_byte_for_byte_with_the_switch_on(loopback_allowed, face):
    path, url = face
    assert fetch_image_bytes(url) == path.read_bytes()


def test_up_to_three_redirects_are_followed_and_a_fourth_is_refused(loopback_allowed, face, images):
    path, _ = face
    assert fetch_image_bytes(f"{images.url}/redirect/{MAX_REDIRECTS}/{path.name}") == path.read_bytes()
    with pytest.raises(URLFetchError, match="redirected more than 3 times"):
        fetch_image_bytes(f"{images.url}/redirect/{MAX_REDIRECTS + 1}/{path.name}")


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1", "169.254.169.254",
    "fe80::1", "fc00::1", "fd00:ec2::254", "224.0.0.1", "ff02::1", "0.0.0.0", "::", "240.0.0.1", "255.255.255.255",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "2002:a00:1::", "64:ff9b::a9fe:a9fe",
    "168.63.129.16", "100.100.100.200", "198.18.0.1", "192.0.2.1",
])
def test_internal_addresses_are_refused(address):
    assert refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert refusal(address) is None


def test_the_switch_lets_only_loopback_through(monkeypatch):
    monkeypatch.setenv(ALLOW_LOOPBACK_ENV, "1")
    assert refusal("127.0.0.1") is None and refusal("::1") is None and refusal("::ffff:127.0.0.1") is None
    for address in ("10.0.0.1", "169.254.169.254", "192.168.1.1", "0.0.0.0"):
        assert refusal(address) is not None


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "localhost", "[::ffff:127.0.0.1]", "0.0.0.0", "127.1"])
def test_loopback_and_names_resolving_to_it_are_refused_with_the_switch_off(images, host, face, monkeypatch):
    monkeypatch.delenv(ALLOW_LOOPBACK_ENV, raising=False)
    seen = _served(images)
    port = images.httpd.server_address[1]
    with pytest.raises(URLFetchError, match="only public addresses are fetched"):
        fetch_image_bytes(f"http://{host}:{port}/img/{face[0].name}")
    assert seen == [], "the server was contacted"


@pytest.mark.parametrize("url", ["http://10.1.2.3/face.png", "http://192.168.0.10:8080/x.jpg",
                                 "http://169.254.169.254/latest/meta-data/", "https://[fd00::1]/a.png",
                                 "http://[::ffff:172.16.0.1]/a.png"])
def test_private_ranges_are_refused_before_any_connection(url):
    started = time.monotonic()
    with pytest.raises(URLFetchError) as caught:
        fetch_image_bytes(url)
    assert "only public addresses are fetched" in str(caught.value)
    assert time.monotonic() - started < 5, "a refused address was connected to"


def test_a_redirect_to_127_0_0_1_is_refused_with_the_switch_off(monkeypatch, images, face):
    """The first hop is allowed; the server turns the switch off before it answers with a redirect to
    127.0.0.1 on another origin, which is checked again and refused."""
    monkeypatch.setenv(ALLOW_LOOPBACK_ENV, "1")
    seen = _served(images)
    images.on_request = lambda path: (seen.append(path), monkeypatch.delenv(ALLOW_LOOPBACK_ENV, raising=False))
    port = images.httpd.server_address[1]
    target = f"http://127.0.0.1:{port}/img/{face[0].name}"
    with pytest.raises(URLFetchError, match="127.0.0.1 points to a loopback address"):
        fetch_image_bytes(f"http://localhost:{port}/to?url={target}")
    assert len(seen) == 1 and seen[0].startswith("/to"), seen


@pytest.mark.parametrize("target", ["http://10.0.0.1/a.png", "http://169.254.169.254/latest/meta-data/",
                                    "http://[::ffff:192.168.1.1]/a.png", "file:///etc/passwd", "gopher://x/"])
def test_a_redirect_to_an_internal_address_or_another_scheme_is_refused(loopback_allowed, images, target):
    with pytest.raises(URLFetchError, match="only public addresses|Only http:// and https://"):
        fetch_image_bytes(f"{images.url}/to?url={target}")


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "Only http:// and https://"), ("ftp://example.com/a.png", "Only http:// and https://"),
    ("not a url", "Only http:// and https://"), ("http://", "not a valid web address"),
    ("http://user:secret@example.com/a.png", "user name or password"), ("", "Only http:// and https://"),
])
def test_other_schemes_and_malformed_urls_are_refused(url, message):
    with pytest.raises(URLFetchError, match=message):
        fetch_image_bytes(url)


def test_an_endless_body_is_cut_off_at_the_byte_limit(loopback_allowed, images):
    started = time.monotonic()
    with pytest.raises(ImageTooLargeError, match="larger than the 1 MiB limit"):
        fetch_image_bytes(f"{images.url}/endless", max_bytes=2**20)
    assert time.monotonic() - started < 10


def test_a_declared_size_over_the_limit_is_refused_before_the_body(loopback_allowed, images):
    started = time.monotonic()
    with pytest.raises(ImageTooLargeError, match="larger than the 50 MiB limit"):
        fetch_image_bytes(f"{images.url}/declared-huge")
    assert time.monotonic() - started < 4, "the body was waited for"


def test_a_slow_drip_is_cut_off_at_the_deadline(loopback_allowed, images):
    started = time.monotonic()
    with pytest.raises(URLFetchError, match="took longer than 2 s"):
        fetch_image_bytes(f"{images.url}/drip", timeout=1, deadline=2)
    assert time.monotonic() - started < 5


def test_a_silent_server_hits_the_read_timeout(loopback_allowed, images):
    images.drip_every = 3
    try:
        with pytest.raises(URLFetchError, match="did not answer within 1 s"):
            fetch_image_bytes(f"{images.url}/drip", timeout=1, deadline=10)
    finally:
        images.drip_every = 0.2


@pytest.mark.parametrize("kind", ["text/html", "application/octet-stream", "application/json"])
def test_a_non_image_content_type_is_refused(loopback_allowed, images, face, kind):
    with pytest.raises(URLFetchError, match=f"sent {kind}, not an image"):
        fetch_image_bytes(f"{images.url}/as/{kind}/{face[0].name}")


def test_an_error_status_is_refused(loopback_allowed, images):
    with pytest.raises(URLFetchError, match="answered HTTP 404"):
        fetch_image_bytes(f"{images.url}/status/404")


def test_fetched_bytes_meet_the_same_decoding_gate(loopback_allowed, images, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is not an image\n" * 30)
    data = fetch_image_bytes(images.add(fake))
    with pytest.raises(InvalidImageError, match="not an image we can read"):
        load_image(data)


# Through the app: REST and gradio_client, on a server started with the switch on.

@pytest.fixture(scope="module")
def server(weights_env, hub):
    return batch_server(weights_env, hub)


def test_rest_predict_takes_a_url(server, images, face, model):
    path, url = face
    response = httpx.post(f"{server.url}/predict", data={"url": url, "threshold": "0"}, timeout=120)
    assert response.status_code == 200, response.text
    assert_same_prediction(response.json(), model.predict(path, threshold=0.0).to_dict())


@pytest.mark.parametrize("form, status, message", [
    ({"url": "http://10.0.0.7/face.png"}, 422, "10.0.0.7 points to a private, local or reserved address"),
    ({"url": "file:///etc/passwd"}, 422, "Only http:// and https:// image addresses can be fetched."),
    ({}, 400, "No image uploaded"),
])
def test_rest_refuses_bad_urls_with_the_library_message(server, form, status, message):
    response = httpx.post(f"{server.url}/predict", data=form, timeout=60)
    assert response.status_code == status
    assert response.json() == {"error": message} or message in response.json()["error"]


def test_rest_refuses_a_url_and_a_file_together(server, face):
    path, url = face
    response = httpx.post(f"{server.url}/predict", data={"url": url},
                          files={"image": (path.name, path.read_bytes(), "image/png")}, timeout=60)
    assert response.status_code == 422 and "not both" in response.json()["error"]


def test_rest_gives_the_decoding_gate_message_for_a_fetched_non_image(server, images, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_bytes(b"this is not an image\n" * 30)
    response = httpx.post(f"{server.url}/predict", data={"url": images.add(fake)}, timeout=60)
    assert response.status_code == 422 and "not an image we can read" in response.json()["error"]


def test_gradio_client_predict_url(server, face, model):
    path, url = face
    client = Client(server.url, verbose=False)
    got = client.predict(url, 0.0, api_name="/predict_url")
    assert_same_prediction(got, model.predict(path, threshold=0.0).to_dict())
    with pytest.raises(AppError) as caught:
        client.predict("http://192.168.3.4/x.png", api_name="/predict_url")
    assert "192.168.3.4 points to a private, local or reserved address" in str(caught.value)
    assert "Traceback" not in str(caught.value)
