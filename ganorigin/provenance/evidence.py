"""The shape every kind of provenance evidence shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .vocabulary import NONE


@dataclass(frozen=True, kw_only=True)
class Evidence:
    """One kind of evidence: found or not, how much it is worth, what it says in one line.

    ``strength`` is ``"strong"`` (cryptographically bound to these bytes), ``"weak"`` (anyone
    can add or remove it) or ``"none"``. ``error`` says why this kind could not be read (the
    other kinds are read all the same).
    """

    found: bool = False
    strength: str = NONE
    says: str = ""
    ai_generated: bool = False  # the evidence says the image is (partly) AI-generated
    error: Optional[str] = None
