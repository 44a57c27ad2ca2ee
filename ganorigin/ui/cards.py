"""The verdict card and the provenance panel: one analysis as the page shows it (HTML / Markdown)."""

from __future__ import annotations

from html import escape
from typing import Optional

from ..provenance import Provenance
from ..provenance.vocabulary import NONE, STRONG, WEAK
from ..result import Prediction
from ..verdict import AI_GENERATED, DETECTOR_NAMES, REAL, effective_band

CARD_CLASSES = {AI_GENERATED: "fake", REAL: "real"}  # anything else: "unsure"
CARD_CSS = """
#verdict-card {border-radius: 12px; padding: 16px 20px; margin-bottom: 4px; border: 1px solid #d0d5dd;}
#verdict-card.fake {background: #fdecea; border-color: #f5b7b1;}
#verdict-card.real {background: #e8f6ee; border-color: #a9dfbf;}
#verdict-card.unsure {background: #fef6e7; border-color: #f7d08a;}
#verdict-card h2 {margin: 0 0 6px 0; display: flex; align-items: center; gap: 10px;}
#verdict-card .dot {width: 14px; height: 14px; border-radius: 50%; background: #98a2b3; display: inline-block;
  flex: none;}
#verdict-card.fake .dot {background: #d92d20;}
#verdict-card.real .dot {background: #12b76a;}
#verdict-card.unsure .dot {background: #f79009;}
#verdict-card .why {color: #344054; margin-bottom: 4px;}
#verdict-card .detector {margin-top: 10px; font-size: 0.92em;}
#verdict-card .meter {position: relative; height: 10px; border-radius: 5px; background: #e4e7ec; margin: 6px 0 4px;}
#verdict-card .meter .fill {position: absolute; left: 0; top: 0; bottom: 0; border-radius: 5px; background: #6172f3;
  z-index: 1;}
/* The unsure band lies over the score's fill, see-through and outlined, so both read at any score. */
#verdict-card .meter .band {position: absolute; top: -2px; bottom: -2px; box-sizing: border-box; border-radius: 2px;
  border: 2px solid #f79009; background: rgba(254, 223, 137, 0.5); z-index: 2;}
#verdict-card .meter .mark {position: absolute; top: -4px; bottom: -4px; width: 2px; background: #101828; z-index: 3;}
#verdict-card .scale {display: flex; justify-content: space-between; font-size: 0.8em; color: #667085;}
/* A file's metadata can hold words of any length: they wrap instead of running off the panel. */
#provenance {border-left: 4px solid #d0d5dd; padding-left: 12px; overflow-wrap: anywhere;}
#verdict-card, #video-card, #batch-detail {overflow-wrap: anywhere;}
#provenance.strong {border-left-color: #6172f3;}
"""
EMPTY_CARD = ("<div id='verdict-card'><h2><span class='dot'></span>No image analysed yet</h2>"
              "<div>Upload a face and press Analyse.</div></div>")
SHORT_NAMES = {"ufd": "GAN detector (UniversalFakeDetect)", "commfor": "Any-generator detector (Community Forensics)"}


def verdict_card(result: Prediction) -> str:
    """The overall verdict (AI-generated / real / unsure), why, and each detector's score on its own meter."""
    verdict = result.verdict
    headline = result.verdict_text if verdict != REAL else "Real"
    if verdict == AI_GENERATED:
        why = "Confident: " + ", ".join(DETECTOR_NAMES[key] for key in result.verdict_by) + "."
    elif verdict == REAL:
        why = "No detector is confident that it is generated."
    else:
        headline, why = "Unsure", "The detectors cannot be trusted here: " + "; ".join(result.unsure_reasons) + "."
    meters = "".join(_meter(key, *score, result.detector_states[key]) for key, score in result.detector_scores.items())
    return (f"<div id='verdict-card' class='{CARD_CLASSES.get(verdict, 'unsure')}'>"
            f"<h2><span class='dot'></span>{escape(headline)}</h2><div class='why'>{escape(why)}</div>{meters}</div>")


def _meter(key: str, probability: float, threshold: float, band: float, state: str) -> str:
    """A detector's score as a fill from 0, with its unsure band (none when it is empty) and threshold mark over it."""
    band = effective_band(threshold, band)
    band_div = (f"<div class='band' style='left:{(threshold - band) * 100:.1f}%;width:{band * 200:.1f}%'"
                " title='unsure band'></div>" if band > 0 else "")
    return (
        f"<div class='detector {key} {state}'>{SHORT_NAMES[key]}: P(fake) <b>{probability:.3f}</b> — "
        f"threshold {threshold:.2f}</div>"
        f"<div class='meter'><div class='fill' style='width:{probability * 100:.1f}%'></div>{band_div}"
        f"<div class='mark' style='left:calc({threshold * 100:.1f}% - 1px)' title='threshold'></div></div>"
        "<div class='scale'><span>real</span><span>generated</span></div>"
    )


def provenance_panel(result: Prediction) -> str:
    """What the file says about its origin, strongest first; when signed credentials and the
    detectors disagree, both are said plainly."""
    provenance: Optional[Provenance] = result.provenance
    if provenance is None:
        return ""
    lines = [f"<div id='provenance' class='{provenance.strength}'>",
             f"<b>Provenance</b>{_STRENGTH_NOTES[provenance.strength]}: {escape(provenance.summary)}"]
    conflict = _conflict(provenance, result.verdict)
    if conflict:
        lines.append(f"<p><b>{escape(conflict)}</b></p>")
    items = "".join(f"<li>{_SECTION_TITLES[name]}: {escape(section.error or section.says or 'nothing found')}</li>"
                    for name, section in provenance.sections.items())
    return "".join(lines) + f"<details><summary>Each kind of evidence</summary><ul>{items}</ul></details></div>"


_STRENGTH_NOTES = {STRONG: " (strong evidence)", WEAK: " (weak evidence)", NONE: ""}
_SECTION_TITLES = {"content_credentials": "Content Credentials (C2PA)", "metadata": "XMP / EXIF / IPTC",
                   "generator_settings": "Generator settings", "watermarks": "Invisible watermarks"}


def _conflict(provenance: Provenance, verdict: str) -> str:
    if provenance.strength != STRONG:
        return ""
    if provenance.ai_generated and verdict != AI_GENERATED:
        return (f"Signed Content Credentials say this image is AI-generated, while the detectors say {verdict}. "
                "The signature is bound to these exact bytes; the detectors only estimate.")
    if not provenance.ai_generated and verdict == AI_GENERATED:
        return ("The detectors say AI-generated, while signed Content Credentials do not say so. "
                "Credentials name who signed, not whether every pixel is camera-made; weigh both.")
    return ""
