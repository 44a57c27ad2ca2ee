"""``read_provenance``: every kind of evidence of where an image came from, read from its original bytes."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar, Union

import numpy as np
from PIL import Image

from ..errors import InvalidImageError
from ..images import NOT_AN_IMAGE, ImageInput, load_image, read_image_bytes
from .containers import Container, read_container, sniff_mime
from .credentials import ContentCredentials, read_content_credentials
from .evidence import Evidence
from .generators import GeneratorSettings, read_generator_settings
from .metadata import Fields, Metadata, read_fields, read_metadata, texts_of
from .vocabulary import NONE, STRENGTH_ORDER
from .watermarks import Watermarks, read_watermarks

logger = logging.getLogger(__name__)

SECTION_NAMES = ("content_credentials", "metadata", "generator_settings", "watermarks")
NOTHING_FOUND = "No provenance found — most platforms strip it; this says nothing either way."
E = TypeVar("E", bound=Evidence)


@dataclass(frozen=True)
class Provenance:
    """What an image's own bytes say about where it came from.

    ``strength``: ``"strong"`` (signed Content Credentials that validate), ``"weak"`` (unsigned
    metadata, generator settings or a watermark: trivially added or stripped) or ``"none"``.
    ``summary`` says it in one line. Each section keeps its own strength, text and error.
    """

    strength: str
    summary: str
    ai_generated: bool  # the evidence behind ``strength`` says the image is (partly) AI-generated
    content_credentials: ContentCredentials
    metadata: Metadata
    generator_settings: GeneratorSettings
    watermarks: Watermarks

    @property
    def sections(self) -> dict[str, Evidence]:
        """The four kinds of evidence by field name."""
        return {name: getattr(self, name) for name in SECTION_NAMES}

    def to_dict(self) -> dict:
        """Plain JSON-ready values."""
        return dataclasses.asdict(self)

    def to_row(self) -> dict:
        """One flat row: the strength, the summary, and what each kind of evidence says."""
        return {"strength": self.strength, "summary": self.summary,
                **{name: section.says for name, section in self.sections.items()}}


def read_provenance(image: Union[str, os.PathLike, bytes, bytearray, memoryview], *, include_prompt: bool = False, decoded: Optional[Image.Image] = None) -> Provenance:
    """Read every kind of provenance evidence from an image file's original bytes.

    Args:
        image: a path or the file's bytes, as uploaded (not re-encoded: that drops most evidence).
        include_prompt: also report a generator's prompt (off: the generator and model only).
        decoded: the same bytes already decoded by :func:`ganorigin.images.load_image`, to spare
            decoding them again for the watermark check.

    Raises:
        InvalidImageError: no such file, empty, over the byte limit, or not an image file at all (no
            image format's signature). A damaged or hostile image never raises: what cannot be read
            becomes its section's ``error``.
    """
    data = read_image_bytes(image)
    if sniff_mime(data) is None:
        raise InvalidImageError(NOT_AN_IMAGE)
    container = _guarded("file structure", lambda: read_container(data),
                         Container(None, problems=[_internal("file structure")]))
    fields = _guarded("XMP / EXIF", lambda: read_fields(container), Fields({}, problems=(_internal("XMP / EXIF"),)))
    return summarise(
        _guarded("Content Credentials", lambda: read_content_credentials(data, container.mime),
                 ContentCredentials(error=_internal("Content Credentials"))),
        _guarded("metadata", lambda: read_metadata(fields), Metadata(error=_internal("metadata"))),
        _guarded("generator settings", lambda: read_generator_settings(texts_of(fields, container),
                                                                       include_prompt=include_prompt),
                 GeneratorSettings(error=_internal("generator settings"))),
        _guarded("watermarks", lambda: _watermarks(data, decoded), Watermarks(error=_internal("watermarks"))),
    )


def load_with_provenance(image: ImageInput) -> tuple[Image.Image, Optional[Provenance]]:
    """Decode ``image`` through the gate and, when it is a file or bytes, read its provenance from
    the same bytes (read once, decoded once). PIL images and arrays have no bytes: None.

    Raises:
        InvalidImageError: the image cannot be read, or is over the limits.
    """
    if isinstance(image, (Image.Image, np.ndarray)):
        return load_image(image), None
    data = read_image_bytes(image)
    decoded = load_image(data)
    return decoded, read_provenance(data, decoded=decoded)


def summarise(credentials: ContentCredentials, metadata: Metadata, generator: GeneratorSettings,
              watermarks: Watermarks) -> Provenance:
    """The overall strength and one line: the strongest evidence first, AI claims before others."""
    sections = (credentials, metadata, generator, watermarks)
    found = sorted((s for s in sections if s.found and s.strength != NONE),
                   key=lambda s: (STRENGTH_ORDER[s.strength], not s.ai_generated))
    if not found:
        unread = metadata.error or watermarks.error
        summary = NOTHING_FOUND if unread is None else (
            f"No provenance found where the file could be read ({unread}); the rest is unknown.")
        return Provenance(NONE, summary, False, *sections)
    summary = "; ".join(dict.fromkeys(s.says for s in found)) + "."
    return Provenance(found[0].strength, summary, found[0].ai_generated, *sections)


def _watermarks(data: bytes, decoded: Optional[Image.Image]) -> Watermarks:
    if decoded is None:
        try:
            decoded = load_image(data)  # the gate: no other decoder sees these bytes
        except InvalidImageError as e:  # the gate's own reason: damaged, too small, too many pixels
            reason = str(e).split(". ")[0].rstrip(".")
            reason = reason[:1].lower() + reason[1:]
            return Watermarks(says=f"not checked: {reason}", error=reason)
    return read_watermarks(decoded)


def _guarded(section: str, read: Callable[[], E], fallback: E) -> E:
    """``read()``; an unexpected error (a bug on this input) costs only this section."""
    try:
        return read()
    except Exception:  # hostile input must never take the other sections down; the log keeps the traceback
        logger.exception("Reading the %s of an image failed", section)
        return fallback


def _internal(section: str) -> str:
    return f"the {section} could not be read (internal error; the server log has the details)"
