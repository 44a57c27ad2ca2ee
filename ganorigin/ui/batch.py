"""The Batch tab: many images (files, ZIPs, URLs) through ``predict_batch``, a sortable table, CSV
and JSON downloads, each image's full analysis on selection; and the ``/predict_batch`` API.

Uploads are read only through :func:`ganorigin.serving.uploads.read_upload`; URLs are fetched under
:mod:`ganorigin.serving.urls`; every image's bytes then meet the decoding gate in the pipeline.
ZIPs are read in memory, never extracted to disk (a member's path is only a label), and refused
before anything is unpacked when they hold too many members or declare more bytes than the batch
limit (zip bombs); each member is read at most up to the image byte limit.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Optional

import gradio as gr
from PIL import Image

from ..errors import InvalidImageError
from ..examples import EXAMPLES
from ..images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, image_too_large, load_image
from ..result import DEFAULT_THRESHOLD, Prediction
from ..serving.uploads import read_upload, reject_upload
from ..serving.urls import fetch_image_bytes
from ..video import is_video
from .common import VIDEO_NOT_IMAGE, api_text, user_error, user_errors, user_threshold
from .files import output_file

MAX_FILES = int(os.environ.get("GANORIGIN_BATCH_MAX_FILES", 100))
MAX_TOTAL_BYTES = int(float(os.environ.get("GANORIGIN_BATCH_MAX_MB", 200)) * 2**20)
TURN = 4  # images per model turn: the progress bar moves, and single analyses wait at most one turn
THUMB_SIDE, DETAIL_SIDE = 64, 384
COLUMNS = ["#", "Image", "File", "Verdict", "Fake probability", "Attributed GAN", "Provenance", "Error"]
# In pixels: on a narrow screen the table scrolls sideways inside its box instead of squeezing every column.
COLUMN_WIDTHS = ["44px", "84px", "170px", "210px", "112px", "104px", "220px", "240px"]
DATATYPES = ["number", "markdown", "str", "str", "number", "str", "str", "str"]
LIMITS = (f"Up to **{MAX_FILES} images** per batch (files, images inside ZIPs and URLs together), "
          f"**{MAX_TOTAL_BYTES / 2**20:g} MiB** in all; each image at most {MAX_IMAGE_BYTES / 2**20:g} MiB and "
          f"{MAX_IMAGE_PIXELS / 1e6:g} megapixels.")
ZIP_MAGIC = b"PK\x03\x04"
RESOURCE_FORKS = "__MACOSX"  # what macOS adds to the ZIPs it makes


@dataclass
class Item:
    """One image of a batch: where it came from, its bytes, or why it has none."""

    name: str
    data: Optional[bytes] = None
    error: Optional[str] = None
    upload: Optional[dict] = None  # the uploaded file it was read from, deleted if the gate refuses it


def collect(files: Optional[list], urls: str, progress: Callable) -> list[Item]:
    """The batch's items, in order: uploaded images, the members of uploaded ZIPs, then each URL.

    Raises:
        gradio.Error: nothing given, more than :data:`MAX_FILES` items or :data:`MAX_TOTAL_BYTES`.
    """
    items: list[Item] = []
    for file in files or []:
        name = os.path.basename(str(file.get("orig_name") or file["path"]) if isinstance(file, dict) else str(file))
        try:
            data = read_upload(file)
        except InvalidImageError as e:  # refused before (and deleted): the same message again
            items.append(Item(name, error=str(e)))
            continue
        items += _zip_items(name, data) if data.startswith(ZIP_MAGIC) else [Item(name, data, upload=file)]
        _check_limits(items)
    lines = [line.strip() for line in (urls or "").splitlines() if line.strip()]
    _check_limits(items + [Item(line) for line in lines])
    for i, url in enumerate(lines):
        progress((i, len(lines)), desc="Fetching URLs", unit="URLs")
        try:
            items.append(Item(url, fetch_image_bytes(url)))
        except InvalidImageError as e:
            items.append(Item(url, error=str(e)))
        _check_limits(items)
    if not items:
        raise user_error("Add images, a ZIP of images or image URLs (one per line) first.", "Nothing to analyse")
    return items


def _check_limits(items: list[Item]) -> None:
    if len(items) > MAX_FILES:
        raise user_error(f"A batch holds at most {MAX_FILES} images; this one has more. Split it.", "Batch too large")
    total = sum(len(item.data or b"") for item in items)
    if total > MAX_TOTAL_BYTES:
        raise user_error(f"A batch holds at most {MAX_TOTAL_BYTES / 2**20:g} MiB of images; this one has more. "
                         "Split it.", "Batch too large")


ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)  # what zipfile reads


def _zip_items(name: str, data: bytes) -> list[Item]:
    """The images in a ZIP, read in memory under the batch limits."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir() and not _skipped(m.filename)]
    except (zipfile.BadZipFile, ValueError, EOFError):
        return [Item(name, error="This ZIP file cannot be read; it may be truncated or corrupt.")]
    if len(members) > MAX_FILES:
        raise user_error(f"{name} holds {len(members)} files; a batch holds at most {MAX_FILES}.", "Batch too large")
    declared = sum(m.file_size for m in members)
    if declared > MAX_TOTAL_BYTES:
        raise user_error(f"{name} unpacks to {declared / 2**20:.0f} MiB; a batch holds at most "
                         f"{MAX_TOTAL_BYTES / 2**20:g} MiB.", "Batch too large")
    return [_member(archive, member, f"{name}/{'/'.join(_parts(member.filename))}") for member in members]


def _skipped(path: str) -> bool:
    """macOS resource forks and hidden files (.DS_Store): not images anyone chose."""
    return any(part == RESOURCE_FORKS or part.startswith(".") for part in _parts(path))


def _parts(path: str) -> list[str]:
    """A member's path as a label: no root, no '..' (nothing is written to disk anyway)."""
    return [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in ("/", "..", ".")]


def _member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, label: str) -> Item:
    if member.file_size > MAX_IMAGE_BYTES:
        return Item(label, error=image_too_large())
    if member.flag_bits & 0x1:
        return Item(label, error="This file could not be unpacked from the ZIP (it is encrypted).")
    if member.compress_type not in ZIP_METHODS:
        return Item(label, error=f"This file could not be unpacked from the ZIP (compression method "
                                 f"{member.compress_type} is not supported).")
    try:
        with archive.open(member) as f:  # stops at the declared size; a lying size fails its CRC
            return Item(label, f.read(MAX_IMAGE_BYTES + 1))
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as e:
        return Item(label, error=f"This file could not be unpacked from the ZIP ({type(e).__name__}).")


def analyse(items: list[Item], predict_batch: Callable, threshold: float, progress: Callable) -> list[dict]:
    """One record per item: its table row, its full analysis (JSON) and a picture for the detail view."""
    readable = [item for item in items if item.data is not None]
    results: dict[int, object] = {}
    for start in range(0, len(readable), TURN):
        progress((start, len(readable)), desc="Analysing", unit="images")
        turn = readable[start:start + TURN]
        with user_errors():
            results.update(zip(map(id, turn), predict_batch([item.data for item in turn], threshold)))
    progress((len(readable), len(readable)), desc="Analysing", unit="images")
    return [_record(n, item, results.get(id(item))) for n, item in enumerate(items, 1)]


def _record(n: int, item: Item, result) -> dict:
    if not isinstance(result, Prediction):
        error = item.error or str(result).partition(": ")[2]  # predict_batch's "item N: <why>"
        if item.data is not None and is_video(item.data[:16]):
            error = VIDEO_NOT_IMAGE
        if item.upload is not None:
            reject_upload(item.upload, error)
        return {"item": n, "file": item.name, "error": error, "result": None, "thumbnail": "", "picture": None}
    picture = load_image(item.data)
    picture.thumbnail((DETAIL_SIDE, DETAIL_SIDE))
    return {"item": n, "file": item.name, "error": None, "result": result.to_dict(extended=True),
            "thumbnail": _thumbnail(picture), "picture": picture}


def _thumbnail(picture: Image.Image) -> str:
    small = picture.copy()
    small.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=80)
    return f"![thumbnail](data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def table_row(record: dict) -> list:
    result = record["result"] or {}
    verdict = result.get("verdict") or {}
    provenance = result.get("provenance") or {}
    p = result.get("detectors", {}).get("ufd", {}).get("probability")
    return [record["item"], record["thumbnail"], record["file"], verdict.get("text", ""),
            None if p is None else round(p, 3), verdict.get("attribution") or ("—" if result else ""),
            provenance.get("summary", ""),
            record["error"] or ""]


def api_rows(records: list[dict]) -> list[dict]:
    """What the JSON download and ``/predict_batch`` give: per item its file, full analysis or error."""
    return [{"item": r["item"], "file": r["file"], "error": r["error"], "result": r["result"]} for r in records]


def csv_text(records: list[dict]) -> str:
    """One CSV row per item; a cell that a spreadsheet would run as a formula is quoted with ``'``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["item", "file", "verdict", "verdict_text", "fake_probability", "commfor_probability",
                     "attribution", "unsure_reasons", "provenance_strength", "provenance", "error"])
    for r in records:
        result = r["result"] or {}
        verdict, detectors = result.get("verdict") or {}, result.get("detectors") or {}
        provenance = result.get("provenance") or {}
        writer.writerow([_cell(v) for v in (
            r["item"], r["file"], verdict.get("label"), verdict.get("text"),
            detectors.get("ufd", {}).get("probability"), detectors.get("commfor", {}).get("probability"),
            verdict.get("attribution"), "; ".join(verdict.get("unsure_reasons", [])), provenance.get("strength"),
            provenance.get("summary"), r["error"])])
    return buffer.getvalue()


def _cell(value):
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return "" if value is None else value


def detail(record: dict) -> tuple:
    """The full analysis of one item: its picture, a summary (HTML, every text in it escaped: a file's name and
    metadata are the uploader's) and the extended JSON."""
    result, file = record["result"], f"<b>{html.escape(record['file'])}</b>"
    if result is None:
        return None, f"<div>{file}: {html.escape(record['error'])}</div>", None
    verdict, detectors = result["verdict"], result["detectors"]
    items = [f"{name}: P(fake) {d['probability']:.3f} (threshold {d['threshold']:.2f}, {d['state']})"
             for name, d in (("UniversalFakeDetect", detectors["ufd"]),
                             ("Community Forensics", detectors.get("commfor"))) if d]
    if result.get("provenance"):
        items.append(f"Provenance ({result['provenance']['strength']}): {result['provenance']['summary']}")
    summary = "".join(f"<li>{html.escape(item)}</li>" for item in items)
    return (record["picture"], f"<h3>{html.escape(verdict['text'])}</h3><div>{file}</div><ul>{summary}</ul>",
            result)


def batch_tab(predict_batch: Callable[[list, float], list]) -> None:
    """The tab's components and events; ``predict_batch(images, threshold)`` analyses a few images."""
    records = gr.State([])
    gr.Markdown("Analyse many images at once: upload images or ZIPs of images, and/or paste image URLs, one per "
                f"line. {LIMITS}", elem_id="batch-limits")
    with gr.Row(equal_height=False):
        # Videos too: refused in their row with the way to analyse them, not by Gradio's "Invalid file type".
        files = gr.File(file_count="multiple", file_types=["image", ".zip", "video"], label="Images or ZIPs",
                        elem_id="batch-files", scale=3, min_width=280)
        urls = gr.Textbox(label="Image URLs (one per line)", lines=5, placeholder="https://example.org/face.jpg",
                          elem_id="batch-urls", scale=2, min_width=280)
    run = gr.Button("Analyse all", variant="primary", elem_id="batch-run")
    summary = gr.Markdown(elem_id="batch-summary")
    table = gr.Dataframe(headers=COLUMNS, datatype=DATATYPES, interactive=False, wrap=True, elem_id="batch-table",
                         label="Results (sort from a column's ⋮ menu; select a row for its full analysis)", max_height=600,
                         column_widths=COLUMN_WIDTHS)
    with gr.Row():
        csv_file = gr.File(label="CSV", elem_id="batch-csv", interactive=False, min_width=200)
        json_file = gr.File(label="JSON", elem_id="batch-json", interactive=False, min_width=200)
    with gr.Row(equal_height=False):
        picture = gr.Image(label="Selected image", interactive=False, height=320, scale=2, min_width=240,
                           elem_id="batch-picture")
        with gr.Column(scale=3, min_width=280):
            chosen = gr.HTML("Select a row to see that image's full analysis.", elem_id="batch-detail")
            chosen_json = gr.JSON(label="Full analysis (JSON)", open=False)

    def run_page(files, urls, progress=gr.Progress()):
        found = analyse_all(files, urls, DEFAULT_THRESHOLD, progress)
        failed = sum(r["error"] is not None for r in found)
        note = f"**{len(found) - failed} of {len(found)} items analysed**" + (
            f"; {failed} failed (see *Error*)." if failed else ".")
        return (note, [table_row(r) for r in found], output_file("ganorigin-batch.csv", csv_text(found).encode()),
                output_file("ganorigin-batch.json", json.dumps(api_rows(found), indent=1).encode()), found)

    def analyse_all(files, urls, threshold, progress) -> list[dict]:
        with user_errors():
            items = collect(files, urls, progress)
        return analyse(items, predict_batch, threshold, progress)

    def select(found: list[dict], event: gr.SelectData):
        number = int(event.row_value[0])
        return detail(next(r for r in found if r["item"] == number))

    def predict_batch_api(files: Optional[list], urls: str = "", threshold: float = DEFAULT_THRESHOLD,
                          progress=gr.Progress()) -> list:
        """Per item (files, ZIP members, then URLs): its file, the full analysis (extended JSON) or its error."""
        threshold = user_threshold(threshold)
        return api_rows(analyse_all(files, urls, threshold, progress))

    # preprocess=False: the handlers get the uploaded files themselves, which Gradio has not opened.
    # /analyse_batch is the page's own event (its outputs are page views): callable, but not advertised.
    run.click(run_page, [files, urls], [summary, table, csv_file, json_file, records], preprocess=False,
              api_name="analyse_batch", api_visibility="undocumented", show_progress_on=table)
    table.select(select, records, [picture, chosen, chosen_json], api_visibility="private")
    api_files = gr.File(file_count="multiple", visible=False, label="files")
    api_urls = api_text("urls", "\n".join(example.url for example in EXAMPLES[1:3]), default="")
    api_threshold = gr.Number(DEFAULT_THRESHOLD, visible=False, label="threshold")
    api_out = gr.JSON(visible=False, label="results")
    api_files.change(predict_batch_api, [api_files, api_urls, api_threshold], api_out, api_name="predict_batch",
                     preprocess=False)
