"""Load: many concurrent ``gradio_client`` users on the real app, good and bad images mixed.

Starts the real ``python app.py`` (test weights, local Hub; the session's shared server) and runs
``GANORIGIN_LOAD_CLIENTS`` clients (default 32) x ``GANORIGIN_LOAD_REQUESTS`` requests (default 5)
at once, about a third of them bad files. Proves: every good request gets exactly the library's
answer, every bad one an ``AppError`` with the clear message, the server is alive and serving
afterwards, and its resident memory after the run is within ``RSS_MARGIN_MB`` of before.
Prints p50/p95 latency and the queue settings. A bigger run:
``GANORIGIN_LOAD_CLIENTS=64 GANORIGIN_LOAD_REQUESTS=20 pytest tests/test_load.py -s``.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app_server import assert_same_prediction, main_server

CLIENTS = int(os.environ.get("GANORIGIN_LOAD_CLIENTS", 32))
REQUESTS_PER_CLIENT = int(os.environ.get("GANORIGIN_LOAD_REQUESTS", 5))
RSS_MARGIN_MB = 300
WARM_UP_S = 300


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _huge_png_header() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory, dev_sample_or_none, model):
    """Good files with the library's expected answer, bad files with the expected message."""
    folder = tmp_path_factory.mktemp("load")
    rng = np.random.default_rng(0)
    good = []
    for i, fmt in enumerate(["PNG", "JPEG", "WEBP"]):
        path = folder / f"good{i}.{fmt.lower()}"
        Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)).save(path, fmt)
        good.append(path)
    good += dev_sample_or_none
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(png, "PNG")
    bad_content = {
        "empty.png": (b"", "empty (0 bytes)"),
        "garbage.jpg": (b"not an image at all\n" * 40, "not an image we can read"),
        "truncated.png": (png.getvalue()[: len(png.getvalue()) // 2], "truncated or corrupt"),
        "huge.png": (_huge_png_header(), "megapixel"),
    }
    bad = []
    for name, (content, message) in bad_content.items():
        (folder / name).write_bytes(content)
        bad.append((folder / name, message))
    return [(p, model.predict(p).to_dict()) for p in good], bad


@pytest.fixture(scope="module")
def dev_sample_or_none(request):
    try:
        return request.getfixturevalue("dev_sample")[:2]
    except pytest.skip.Exception:
        return []


def test_concurrent_clients_mixing_good_and_bad_images(weights_env, hub, files):
    good, bad = files
    server = main_server(weights_env, hub)
    warm = Client(server.url, verbose=False)
    deadline = time.monotonic() + WARM_UP_S
    while True:  # the model loads in the background after start
        try:
            warm.predict(handle_file(str(good[0][0])), api_name="/predict")
            break
        except AppError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    rss_before = _rss_mb(server.process.pid)

    def one_client(i: int) -> list[tuple[str, float, str]]:
        client = Client(server.url, verbose=False)
        outcomes = []
        for j in range(REQUESTS_PER_CLIENT):
            is_bad = (i + j) % 3 == 0
            path, expected = bad[(i + j) % len(bad)] if is_bad else good[(i + j) % len(good)]
            start = time.perf_counter()
            try:
                got = client.predict(handle_file(str(path)), api_name="/predict")
            except AppError as e:
                ok = is_bad and expected in str(e) and "Traceback" not in str(e)
                outcomes.append(("bad-ok" if ok else f"FAILED {path.name}: {e}", time.perf_counter() - start, ""))
                continue
            except Exception as e:  # a dropped or refused request: reported below, with its text
                outcomes.append((f"FAILED {path.name}: {type(e).__name__}: {e}", time.perf_counter() - start, ""))
                continue
            if is_bad:
                outcomes.append((f"FAILED {path.name}: accepted a bad file", time.perf_counter() - start, ""))
                continue
            try:
                assert_same_prediction(got, expected)
                outcomes.append(("good-ok", time.perf_counter() - start, ""))
            except AssertionError as e:
                outcomes.append((f"FAILED {path.name}: wrong answer {got} ({e})", time.perf_counter() - start, ""))
        return outcomes

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [o for outcomes in pool.map(one_client, range(CLIENTS)) for o in outcomes]
    wall = time.perf_counter() - start

    failures = [r[0] for r in results if r[0].startswith("FAILED")]
    latencies = np.array([r[1] for r in results])
    served = sum(r[0] in ("good-ok", "bad-ok") for r in results)
    assert server.process.poll() is None, f"the server died:\n{server.logs()[-3000:]}"
    after = warm.predict(handle_file(str(good[0][0])), api_name="/predict")
    assert_same_prediction(after, good[0][1])
    rss_after = _rss_mb(server.process.pid)
    print(
        f"\nload: {CLIENTS} clients x {REQUESTS_PER_CLIENT} requests = {len(results)} in {wall:.0f} s; "
        f"{served} served correctly ({sum(r[0] == 'good-ok' for r in results)} good, "
        f"{sum(r[0] == 'bad-ok' for r in results)} bad answered with the clear error), {len(failures)} failed; "
        f"latency p50 {np.percentile(latencies, 50):.2f} s, p95 {np.percentile(latencies, 95):.2f} s; "
        f"queue: default_concurrency_limit={server.env.get('GANORIGIN_CONCURRENCY', 1)} (GANORIGIN_CONCURRENCY), "
        f"max_size={server.env.get('GANORIGIN_QUEUE_SIZE', 64)} (GANORIGIN_QUEUE_SIZE); "
        f"server RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    )
    assert not failures, f"{len(failures)} requests failed: {failures[:5]}"
    assert served == CLIENTS * REQUESTS_PER_CLIENT
    assert rss_after - rss_before < RSS_MARGIN_MB, f"server RSS grew {rss_after - rss_before:.0f} MB"
