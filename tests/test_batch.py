"""The Batch tab and ``/predict_batch`` against a real ``python app.py`` server and a real image server.

Proves that 20 dev images plus a list of URLs served locally go through ``/predict_batch`` with
progress reported, each item's full analysis equal to the library's for that file, in order, and a
bad file, a refused URL and a non-image URL each cost only their own row, with the library's
message; that the page's event gives a table with a thumbnail per image and CSV and JSON downloads
holding the same numbers; that ZIPs are read in memory with hidden files and macOS forks skipped and
member paths reduced to labels (no ``..``), a broken ZIP costing only its own row; and that too many files, too many bytes, a ZIP bomb and a
ZIP with too many members are refused with one message before anything is analysed.
"""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from ganorigin.ui.batch import MAX_FILES, MAX_TOTAL_BYTES
from ganorigin.ui.common import VIDEO_NOT_IMAGE

from batch_support import batch_server
from image_server import ImageServer
from video_files import write_clip


@pytest.fixture(scope="module")
def server(weights_env, hub):
    return batch_server(weights_env, hub)


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def images():
    server = ImageServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def twenty(dev_images) -> list[Path]:
    """20 dev images, PNG and JPEG, real and every GAN."""
    pools = [sorted(paths) for _, paths in sorted(dev_images.items())]
    picked = [pool[i] for i in range(10) for pool in pools if i < len(pool)]
    return picked[:20]


def _same_analysis(got: dict, want: dict) -> None:
    assert got["verdict"] == want["verdict"]
    assert got["detectors"]["ufd"]["probability"] == pytest.approx(want["detectors"]["ufd"]["probability"], abs=1e-6)
    assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
    for key in ("strength", "summary", "ai_generated"):
        assert got["provenance"][key] == want["provenance"][key]


def test_twenty_images_and_urls_go_through_predict_batch_with_progress(client, model, twenty, images, tmp_path):
    urls = [images.add(path, f"url-{i}{path.suffix}") for i, path in enumerate(twenty[:3])]
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"this is not an image\n" * 30)
    urls += ["http://10.9.8.7/face.png", images.add(notes)]
    job = client.submit([handle_file(str(p)) for p in [*twenty, notes]], "\n".join(urls), api_name="/predict_batch")
    progress = []
    while not job.done():
        if (status := job.status()).progress_data:
            progress.append(status.progress_data[0].desc)
        time.sleep(0.05)
    rows = job.result()

    assert [r["item"] for r in rows] == list(range(1, 27))
    assert [r["file"] for r in rows] == [p.name for p in twenty] + ["notes.png"] + urls
    for row, path in zip(rows[:20], twenty):
        assert row["error"] is None
        _same_analysis(row["result"], model.predict(path).to_dict(extended=True))
    for row, path in zip(rows[21:24], twenty[:3]):
        _same_analysis(row["result"], model.predict(path.read_bytes()).to_dict(extended=True))
    assert "not an image we can read" in rows[20]["error"] and rows[20]["result"] is None
    assert "10.9.8.7 points to a private, local or reserved address" in rows[24]["error"]
    assert "not an image we can read" in rows[25]["error"]
    assert "Analysing" in progress, f"no progress was reported: {progress}"


def test_the_page_event_gives_a_table_with_thumbnails_and_csv_and_json_downloads(client, model, twenty):
    summary, table, csv_path, json_path = client.predict(
        [handle_file(str(p)) for p in twenty[:4]], "", api_name="/analyse_batch")
    assert summary == "**4 of 4 items analysed**."
    assert table["headers"][:4] == ["#", "Image", "File", "Verdict"]
    rows = table["data"]
    assert [r[2] for r in rows] == [p.name for p in twenty[:4]]
    assert all(r[1].startswith("![thumbnail](data:image/jpeg;base64,") for r in rows)
    with open(csv_path, newline="") as f:
        as_csv = list(csv.DictReader(f))
    as_json = json.loads(Path(json_path).read_text())
    for path, table_row, csv_row, json_row in zip(twenty, rows, as_csv, as_json):
        want = model.predict(path)
        assert table_row[3] == csv_row["verdict_text"] == want.verdict_text == json_row["result"]["verdict"]["text"]
        assert table_row[4] == pytest.approx(want.fake_probability, abs=1e-3)
        assert float(csv_row["fake_probability"]) == pytest.approx(want.fake_probability, abs=1e-6)
        assert csv_row["file"] == json_row["file"] == path.name


def _zip(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zip_is_read_in_memory_with_member_paths_as_labels(client, model, twenty, tmp_path):
    archive = tmp_path / "tip-line.zip"
    archive.write_bytes(_zip({
        "folder/a.png" if twenty[0].suffix == ".png" else f"folder/a{twenty[0].suffix}": twenty[0].read_bytes(),
        f"../../escape{twenty[1].suffix}": twenty[1].read_bytes(),
        "readme.txt": b"not an image",
        "clip.mp4": write_clip([((128, 128, 128), 1)], size=(64, 64)),
        "__MACOSX/folder/._a.png": b"resource fork",
        "folder/.DS_Store": b"finder",
    }))
    broken = tmp_path / "broken.zip"
    broken.write_bytes(archive.read_bytes()[:200])
    rows = client.predict([handle_file(str(archive)), handle_file(str(broken))], api_name="/predict_batch")  # no URLs
    assert [r["file"] for r in rows] == [f"tip-line.zip/folder/a{twenty[0].suffix}",
                                         f"tip-line.zip/escape{twenty[1].suffix}", "tip-line.zip/readme.txt",
                                         "tip-line.zip/clip.mp4", "broken.zip"]
    assert "This ZIP file cannot be read" in rows[4]["error"]
    _same_analysis(rows[0]["result"], model.predict(twenty[0].read_bytes()).to_dict(extended=True))
    _same_analysis(rows[1]["result"], model.predict(twenty[1].read_bytes()).to_dict(extended=True))
    assert "not an image we can read" in rows[2]["error"]
    assert rows[3]["error"] == VIDEO_NOT_IMAGE, "a video is pointed to the Video tab"


def test_a_zip_bomb_is_refused_before_it_is_unpacked(client, tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("huge.bmp", "w", force_zip64=True) as member:
            chunk = b"\0" * 2**20
            for _ in range(MAX_TOTAL_BYTES // 2**20 + 1):
                member.write(chunk)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(AppError) as caught:
        client.predict([handle_file(str(bomb))], "", api_name="/predict_batch")
    assert f"bomb.zip unpacks to {MAX_TOTAL_BYTES // 2**20 + 1} MiB" in str(caught.value)


def test_a_zip_with_too_many_members_is_refused(client, tmp_path):
    many = tmp_path / "many.zip"
    many.write_bytes(_zip({f"{i}.png": b"x" for i in range(MAX_FILES + 1)}))
    with pytest.raises(AppError) as caught:
        client.predict([handle_file(str(many))], "", api_name="/predict_batch")
    assert f"holds {MAX_FILES + 1} files; a batch holds at most {MAX_FILES}" in str(caught.value)


def test_too_many_items_are_refused_with_the_limit(client):
    urls = "\n".join(f"http://example.org/{i}.png" for i in range(MAX_FILES + 1))
    with pytest.raises(AppError) as caught:
        client.predict([], urls, api_name="/predict_batch")
    assert f"A batch holds at most {MAX_FILES} images" in str(caught.value)


def test_an_empty_batch_is_refused(client):
    with pytest.raises(AppError) as caught:
        client.predict([], "  \n", api_name="/predict_batch")
    assert "Add images, a ZIP of images or image URLs" in str(caught.value)


def test_the_limits_are_stated_on_the_page(server):
    texts = [c.get("props", {}).get("value") for c in server.get_json("/config")["components"]]
    limits = next(t for t in texts if isinstance(t, str) and "per batch" in t)
    assert f"{MAX_FILES} images" in limits and f"{MAX_TOTAL_BYTES / 2**20:g} MiB" in limits


def _zip_with_header(data: bytes, *, flags: int = 0, method: int = zipfile.ZIP_STORED) -> bytes:
    """One stored member, then its local and central headers changed to say ``flags`` / ``method``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("face.png", data)
    raw = bytearray(buffer.getvalue())
    local, central = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")
    raw[local + 6:local + 10] = flags.to_bytes(2, "little") + method.to_bytes(2, "little")
    raw[central + 8:central + 12] = flags.to_bytes(2, "little") + method.to_bytes(2, "little")
    return bytes(raw)


@pytest.mark.parametrize("flags, method, why", [(1, zipfile.ZIP_STORED, "it is encrypted"),
                                                (0, 99, "compression method 99 is not supported")])
def test_a_member_zipfile_cannot_unpack_is_its_own_error_row(twenty, flags, method, why):
    from ganorigin.ui.batch import _zip_items

    items = _zip_items("tip.zip", _zip_with_header(twenty[0].read_bytes(), flags=flags, method=method))
    assert [(item.name, item.data, item.error) for item in items] == [
        ("tip.zip/face.png", None, f"This file could not be unpacked from the ZIP ({why}).")]
