"""Metadata blocks found by walking a file's container structure, without decoding a pixel.

PNG chunks (tEXt, zTXt, iTXt, eXIf), JPEG segments up to the first scan (APP1 EXIF and XMP,
COM) and WebP RIFF chunks (EXIF, XMP). Every length is checked against the bytes that are
there, compressed text is inflated only up to a cap, and the walk stops after a bounded number
of blocks: a hostile file costs at most one pass over its bytes. Damage stops the walk and is
recorded in ``problems``; what was read before it is kept.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Optional

MAX_TEXT_BYTES = 2 * 2**20  # one text chunk, inflated (ComfyUI workflows run to a few hundred KB)
MAX_TOTAL_TEXT_BYTES = 8 * 2**20
MAX_XMP_BYTES = 2**20
MAX_EXIF_BYTES = 2**20
MAX_BLOCKS = 100_000  # chunks or segments walked; a 50 MB PNG in 8 KB IDAT chunks has ~6,400

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_KEYWORD = "XML:com.adobe.xmp"  # the PNG iTXt keyword of an XMP packet
_JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_JPEG_EXIF = b"Exif\x00\x00"


@dataclass
class Container:
    """What a file carries besides its pixels."""

    mime: Optional[str]
    texts: list = field(default_factory=list)  # (keyword, text): PNG text chunks, JPEG comments
    xmp: list = field(default_factory=list)  # XMP packets (bytes)
    exif: Optional[bytes] = None  # a TIFF structure (byte order mark first)
    problems: list = field(default_factory=list)  # what could not be read, in words
    _text_budget: int = field(default=MAX_TOTAL_TEXT_BYTES, repr=False)

    def add_text(self, keyword: str, raw: bytes, encoding: str) -> None:
        if len(raw) > min(MAX_TEXT_BYTES, self._text_budget):
            self.problems.append(f"text {keyword!r} of {len(raw)} bytes skipped (limits: {MAX_TEXT_BYTES // 2**20} MiB "
                                 f"a text, {MAX_TOTAL_TEXT_BYTES // 2**20} MiB in all)")
            return
        self._text_budget -= len(raw)
        text = raw.decode(encoding, "replace")
        if keyword == XMP_KEYWORD:
            self.add_xmp(raw)
        else:
            self.texts.append((keyword, text))

    def add_xmp(self, packet: bytes) -> None:
        if len(packet) > MAX_XMP_BYTES:
            self.problems.append(f"an XMP packet of {len(packet)} bytes was skipped (limit {MAX_XMP_BYTES})")
        else:
            self.xmp.append(packet)

    def set_exif(self, tiff: bytes) -> None:
        if tiff.startswith(_JPEG_EXIF):
            tiff = tiff[len(_JPEG_EXIF):]
        if len(tiff) > MAX_EXIF_BYTES:
            self.problems.append(f"an EXIF block of {len(tiff)} bytes was skipped (limit {MAX_EXIF_BYTES})")
        elif self.exif is None:
            self.exif = tiff


def sniff_mime(data: bytes) -> Optional[str]:
    """The image MIME type from the magic bytes (None when not one we know)."""
    if data.startswith(PNG_SIGNATURE):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if data[:2] == b"BM" and len(data) >= 26:  # a BMP file header and the size of its info header
        return "image/bmp"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"heif"):
            return "image/heic"
    return None


def read_container(data: bytes) -> Container:
    """Text, XMP and EXIF blocks of a PNG, JPEG, WebP or TIFF file (other formats: none)."""
    container = Container(sniff_mime(data))
    walk = {"image/png": _walk_png, "image/jpeg": _walk_jpeg, "image/webp": _walk_webp}.get(container.mime)
    if walk is not None:
        walk(data, container)
    elif container.mime == "image/tiff":
        container.set_exif(data[:MAX_EXIF_BYTES])  # the file is a TIFF structure; its tags are read lazily
    return container


def _chunks(data: bytes, pos: int, fmt: str, name: str, trailer: int, container: Container):
    """``(kind, body)`` of each chunk of a PNG (``fmt`` ">I4s": length, kind) or RIFF/WebP ("<4sI": kind,
    length) file from ``pos``; ``trailer`` bytes follow each body (PNG's CRC; -1: RIFF's pad to an even
    size). A truncated chunk, or more than ``MAX_BLOCKS``, is a problem noted, and the walk ends."""
    for _ in range(MAX_BLOCKS):
        if pos + 8 > len(data):
            return
        first, second = struct.unpack(fmt, data[pos : pos + 8])
        length, kind = (first, second) if fmt.startswith(">") else (second, first)
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            container.problems.append(f"{name} chunk {kind.decode('latin-1')!r} is truncated")
            return
        yield kind, body
        pos += 8 + length + (length & 1 if trailer < 0 else trailer)
    container.problems.append(f"more than {MAX_BLOCKS} {name} chunks; the rest was not read")


def _walk_png(data: bytes, container: Container) -> None:
    for kind, body in _chunks(data, len(PNG_SIGNATURE), ">I4s", "PNG", 4, container):
        if kind == b"IEND":
            return
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            _png_text(kind, body, container)
        elif kind == b"eXIf":
            container.set_exif(body)


def _png_text(kind: bytes, body: bytes, container: Container) -> None:
    keyword, sep, rest = body.partition(b"\x00")
    if not sep:
        container.problems.append("a PNG text chunk without a keyword")
        return
    name = keyword.decode("latin-1")
    if kind == b"tEXt":
        container.add_text(name, rest, "latin-1")
    elif kind == b"zTXt":
        text = _inflate(rest[1:], name, container)  # rest[0]: compression method
        if text is not None:
            container.add_text(name, text, "latin-1")
    else:  # iTXt: flag, method, language\0, translated keyword\0, UTF-8 text
        if len(rest) < 2:
            container.problems.append(f"PNG iTXt chunk {name!r} is truncated")
            return
        compressed, fields = rest[0], rest[2:].split(b"\x00", 2)
        if len(fields) < 3:
            container.problems.append(f"PNG iTXt chunk {name!r} is malformed")
            return
        text = _inflate(fields[2], name, container) if compressed else fields[2]
        if text is not None:
            container.add_text(name, text, "utf-8")


def _inflate(compressed: bytes, name: str, container: Container) -> Optional[bytes]:
    """zlib data inflated to at most MAX_TEXT_BYTES (a zip bomb stops there)."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(compressed, MAX_TEXT_BYTES)
    except zlib.error:
        container.problems.append(f"compressed text {name!r} is corrupt")
        return None
    if inflater.unconsumed_tail:
        container.problems.append(f"compressed text {name!r} inflates past {MAX_TEXT_BYTES // 2**20} MiB; skipped")
        return None
    return text


def _walk_jpeg(data: bytes, container: Container) -> None:
    pos = 2
    for _ in range(MAX_BLOCKS):
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: metadata comes before the scan
            return
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(body) < length - 2:
            container.problems.append(f"JPEG segment 0x{marker:02X} is truncated")
            return
        if marker == 0xE1 and body.startswith(_JPEG_EXIF):
            container.set_exif(body)
        elif marker == 0xE1 and body.startswith(_JPEG_XMP):
            container.add_xmp(body[len(_JPEG_XMP):])
        elif marker == 0xFE:
            container.add_text("comment", body, "utf-8")
        pos += 2 + length
    container.problems.append(f"more than {MAX_BLOCKS} JPEG segments; the rest was not read")


def _walk_webp(data: bytes, container: Container) -> None:
    for kind, body in _chunks(data, 12, "<4sI", "WebP", -1, container):
        if kind == b"EXIF":
            container.set_exif(body)
        elif kind == b"XMP ":
            container.add_xmp(body)
