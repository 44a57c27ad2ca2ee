"""Provenance evidence read from an image file's own bytes, offline.

Four kinds, each with its own strength: C2PA Content Credentials (:mod:`.credentials`), IPTC
DigitalSourceType and the XMP / EXIF fields that name a generator or camera (:mod:`.metadata`),
generator settings in text chunks (:mod:`.generators`) and the invisible Stable Diffusion / SDXL
watermarks (:mod:`.watermarks`). :func:`read_provenance` reads them all and sums them up.
"""

from .credentials import TRUST_ANCHORS_ENV, ContentCredentials
from .evidence import Evidence
from .generators import GeneratorSettings
from .metadata import Metadata
from .reader import NOTHING_FOUND, SECTION_NAMES, Provenance, load_with_provenance, read_provenance
from .vocabulary import NONE, STRONG, WEAK
from .watermarks import MarkReading, Watermarks

__all__ = ["NONE", "NOTHING_FOUND", "SECTION_NAMES", "STRONG", "TRUST_ANCHORS_ENV", "WEAK", "ContentCredentials", "Evidence",
           "GeneratorSettings", "MarkReading", "Metadata", "Provenance", "Watermarks", "load_with_provenance",
           "read_provenance"]
