"""IPTC DigitalSourceType and the XMP / EXIF fields that name a generator or a camera.

XMP is parsed with the standard library's expat-based ElementTree, made safe by refusing any
packet that declares a DTD: without a DTD no entity can be declared, so nothing can expand
(billion laughs, quadratic blow-up) and nothing external can be fetched (ElementTree never
resolves external entities anyway). XMP has no use for a DTD. Packets are capped at 1 MiB.

EXIF is read with Pillow's EXIF parser (the same one the decoding gate uses to orient images):
a tag table inside a block of at most 1 MiB, no pixels.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Iterable, Optional

from PIL import Image

from .containers import Container
from .evidence import Evidence
from .vocabulary import AI_SOURCE_TYPES, WEAK, clean_text, describe_source_type, known_generator, source_type_code

_NS = {
    "iptc_ext": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
}
XMP_FIELDS = {  # the XMP properties read, by their (namespace, name)
    (_NS["iptc_ext"], "DigitalSourceType"): "digital_source_type",
    (_NS["xmp"], "CreatorTool"): "creator_tool",
    (_NS["tiff"], "Make"): "make",
    (_NS["tiff"], "Model"): "model",
    (_NS["dc"], "description"): "description",
}
EXIF_FIELDS = {0x010F: "make", 0x0110: "model", 0x0131: "software", 0x010E: "description"}
EXIF_IFD, EXIF_USER_COMMENT, TIFF_XMP = 0x8769, 0x9286, 700
# What Pillow raises on a damaged tag table (it copes with most damage by itself).
EXIF_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, OverflowError)


class UnsafeXMPError(ValueError):
    """An XMP packet declares a DTD (the only way to declare entities); it is not parsed."""


@dataclass(frozen=True, kw_only=True)
class Metadata(Evidence):
    """Unsigned metadata fields: trivially added, edited or stripped."""

    digital_source_type: Optional[str] = None  # IPTC code from XMP, e.g. "trainedAlgorithmicMedia"
    software: Optional[str] = None  # EXIF Software, or a PNG "Software" text
    creator_tool: Optional[str] = None  # XMP xmp:CreatorTool
    camera: Optional[str] = None  # EXIF / XMP Make and Model
    generator: Optional[str] = None  # a known AI generator named in the fields above


@dataclass
class Fields:
    """Values read from XMP, EXIF and text chunks, shared with the generator-settings reader."""

    values: dict
    user_comment: Optional[str] = None  # EXIF UserComment: AUTOMATIC1111 writes its parameters there in JPEG/WebP
    problems: tuple = ()


def read_fields(container: Container) -> Fields:
    """The XMP and EXIF fields of ``container``; damage in one block is recorded, the others are read."""
    values: dict = {}
    problems = list(container.problems)
    user_comment = None
    if container.exif is not None:
        try:
            exif_values, user_comment, tiff_xmp = _exif(container.exif)
        except EXIF_ERRORS as e:
            problems.append(f"EXIF unreadable ({type(e).__name__})")
        else:
            _merge(values, exif_values)
            if tiff_xmp:
                container.add_xmp(tiff_xmp)
    for packet in container.xmp:
        try:
            _merge(values, parse_xmp(packet))
        except UnsafeXMPError as e:
            problems.append(str(e))
        except (ET.ParseError, RecursionError) as e:
            problems.append(f"XMP unreadable ({clean_text(str(e), 120) or type(e).__name__})")
    for keyword, text in container.texts:
        if keyword.lower() == "software":
            _merge(values, {"software": text})
    return Fields(values, user_comment, tuple(problems))


def read_metadata(fields: Fields) -> Metadata:
    """What the unsigned XMP / EXIF fields say about the image's source."""
    v = fields.values
    source_type = clean_text(source_type_code(v["digital_source_type"]), 80) if v.get("digital_source_type") else None
    camera = clean_text(" ".join(dict.fromkeys(x for x in (v.get("make"), v.get("model")) if x))) or None
    software, creator_tool = clean_text(v.get("software")), clean_text(v.get("creator_tool"))
    generator = next(filter(None, map(known_generator, (software, creator_tool, camera))), None)
    error = "; ".join(fields.problems) or None
    statements = []
    if source_type:
        statements.append(f"says {describe_source_type(source_type)} (IPTC {source_type})")
    if generator:
        statements.append(f"names the AI generator {generator}")
    if camera:
        statements.append(f"names the camera {camera}")
    tools = [t for t in dict.fromkeys((software, creator_tool)) if t and known_generator(t) is None]
    if tools:
        statements.append(f"names the software {', '.join(tools)}")
    if not statements:
        return Metadata(says="no source named in XMP / EXIF", error=error)
    return Metadata(
        found=True, strength=WEAK, says="Unsigned metadata " + "; ".join(statements),
        ai_generated=source_type in AI_SOURCE_TYPES or generator is not None,
        digital_source_type=source_type, software=software, creator_tool=creator_tool, camera=camera,
        generator=generator, error=error,
    )


def parse_xmp(packet: bytes) -> dict:
    """The properties of XMP_FIELDS found in one packet, by field name (first value wins).

    Raises:
        UnsafeXMPError: the packet declares a DTD.
        ET.ParseError: it is not well-formed XML.
    """
    text = _xmp_text(packet)
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise UnsafeXMPError("XMP packet declares a DTD (entities); refused unparsed")
    root = ET.fromstring(text[: text.rfind(">") + 1])
    found: dict = {}
    for element in root.iter():
        for key, value in element.attrib.items():
            if (name := XMP_FIELDS.get(_split(key))) and name not in found:
                found[name] = value
        if (name := XMP_FIELDS.get(_split(element.tag))) and name not in found:
            value = _element_value(element)
            if value:
                found[name] = value
    return found


def _xmp_text(packet: bytes) -> str:
    """XMP is UTF-8, or UTF-16/32 with a byte order mark."""
    for bom, encoding in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                          (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if packet.startswith(bom):
            return packet.decode(encoding, "replace")
    return packet.decode("utf-8", "replace").lstrip("\ufeff")


def _split(tag) -> tuple:
    """``{namespace}name`` -> (namespace, name)."""
    if not isinstance(tag, str) or not tag.startswith("{"):
        return ("", tag)
    namespace, _, name = tag[1:].partition("}")
    return (namespace, name)


def _element_value(element: ET.Element) -> Optional[str]:
    """An XMP property's value: its text, an ``rdf:resource``, or its first ``rdf:li``."""
    if element.text and element.text.strip():
        return element.text.strip()
    resource = element.get(f"{{{_NS['rdf']}}}resource")
    if resource:
        return resource
    for item in element.iter(f"{{{_NS['rdf']}}}li"):
        if item.text and item.text.strip():
            return item.text.strip()
    return None


def _exif(tiff: bytes) -> tuple[dict, Optional[str], Optional[bytes]]:
    """(named fields, UserComment text, an XMP packet held in TIFF tag 700)."""
    exif = Image.Exif()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the damage it skips
        exif.load(tiff)
        values = {name: exif.get(tag) for tag, name in EXIF_FIELDS.items()}
        comment = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
        xmp = exif.get(TIFF_XMP)
    return (values, decode_user_comment(comment), xmp if isinstance(xmp, bytes) else None)


def decode_user_comment(raw) -> Optional[str]:
    """EXIF UserComment: an 8-byte character code ("ASCII", "UNICODE" = UTF-16, or undefined) then text."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes) or len(raw) <= 8:
        return None
    code, body = raw[:8], raw[8:]
    if code.startswith(b"UNICODE"):
        # Writers disagree on the byte order; ASCII-range text has its zero bytes first in big-endian.
        big_endian = body[:1] == b"\x00" or (len(body) > 1 and body[1:2] != b"\x00")
        return body.decode("utf-16-be" if big_endian else "utf-16-le", "replace")
    return body.decode("utf-8", "replace")


def _merge(values: dict, new: dict) -> None:
    """Keep the first non-empty value of each field."""
    for name, value in new.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value.strip("\x00 ") and name not in values:
            values[name] = value


def texts_of(fields: Fields, container: Container) -> Iterable[tuple[str, str]]:
    """Every text the generator-settings reader looks at: chunks, comments, descriptions, UserComment."""
    yield from container.texts
    if fields.values.get("description"):
        yield ("description", fields.values["description"])
    if fields.user_comment:
        yield ("UserComment", fields.user_comment)
