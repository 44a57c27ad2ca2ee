"""C2PA Content Credentials, read and validated offline with c2pa-python.

No network: remote manifests and OCSP are never fetched. Signers are checked against a trust
list only when ``GANORIGIN_C2PA_TRUST_ANCHORS`` names a PEM file of root certificates;
without it a signature can be intact, but its signer is "not checked".
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Optional

import c2pa

from .evidence import Evidence
from .vocabulary import AI_SOURCE_TYPES, STRONG, WEAK, clean_text, describe_source_type, source_type_code

TRUST_ANCHORS_ENV = "GANORIGIN_C2PA_TRUST_ANCHORS"
MAX_TRUST_ANCHORS_BYTES = 2**20
MAX_INGREDIENTS = 64  # listed per manifest
MAX_MANIFESTS_VISITED = 256  # when looking for an AI-generated ingredient

# What the validation status codes of the C2PA specification mean for a reader.
EDITED_AFTER_SIGNING = "hash mismatch: the image was changed after it was signed"
STATUS_MEANINGS = {
    "signingCredential.untrusted": "unknown signer: the certificate is not on the trust list",
    "assertion.dataHash.mismatch": EDITED_AFTER_SIGNING,
    "assertion.bmffHash.mismatch": EDITED_AFTER_SIGNING,
    "assertion.boxesHash.mismatch": EDITED_AFTER_SIGNING,
    "assertion.collectionHash.mismatch": EDITED_AFTER_SIGNING,
    "assertion.hashedURI.mismatch": "the manifest's statements were changed after signing",
    "claimSignature.mismatch": "signature broken: it does not match the signed claim",
    "claimSignature.missing": "the claim has no signature",
    "claimSignature.outsideValidity": "signed outside the certificate's validity period",
    "signingCredential.invalid": "the signing certificate is not valid for signing",
    "signingCredential.revoked": "the signing certificate was revoked",
    "signingCredential.expired": "the signing certificate had expired",
}
UNTRUSTED = "signingCredential.untrusted"
UNREADABLE = "unreadable manifest: Content Credentials are present but damaged"


@dataclass(frozen=True, kw_only=True)
class ContentCredentials(Evidence):
    """The active C2PA manifest: who signed it, what it says was done, and whether it holds.

    ``validation`` is ``"trusted"`` (intact, signer on the configured trust list), ``"valid"``
    (intact; signer unknown or not checked), ``"invalid"`` (see ``problems``) or None.
    """

    claim_generator: Optional[str] = None
    signer: Optional[str] = None  # the signing certificate's common name
    issuer: Optional[str] = None  # the signing certificate's organisation
    signing_time: Optional[str] = None  # from a trusted timestamp, when the manifest has one
    actions: tuple = ()  # e.g. ("c2pa.created", "c2pa.converted")
    software_agent: Optional[str] = None  # the tool named by the actions, e.g. a model's name
    digital_source_type: Optional[str] = None  # IPTC code, e.g. "trainedAlgorithmicMedia"
    ingredients: tuple = ()  # {"title", "relationship", "digital_source_type"} per ingredient
    validation: Optional[str] = None
    validation_state: Optional[str] = None  # c2pa's own word: "Trusted", "Valid" or "Invalid"
    status_codes: tuple = ()  # failure codes: the active manifest's, then the rest of the store's
    problems: tuple = ()  # what those codes mean
    trust_list: bool = False  # whether GANORIGIN_C2PA_TRUST_ANCHORS was configured


def read_content_credentials(data: bytes, mime: Optional[str]) -> ContentCredentials:
    """The C2PA manifest of ``data`` (``mime``: its type, or None to let c2pa detect it)."""
    try:
        anchors = _trust_anchors()
        context = c2pa.Context(settings=c2pa.Settings.from_dict(_settings(anchors)))
    except (OSError, ValueError, c2pa.C2paError) as e:
        detail = (e.strerror or type(e).__name__) if isinstance(e, OSError) else _short(e)  # never the server's path
        return ContentCredentials(error=f"the trust anchors in {TRUST_ANCHORS_ENV} could not be used ({detail})")
    try:
        with c2pa.Reader(mime, io.BytesIO(data), context=context) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError.ManifestNotFound:
        return ContentCredentials(says="no Content Credentials")
    except (c2pa.C2paError, ValueError, RecursionError) as e:
        if isinstance(e, c2pa.C2paError.RemoteManifest) or str(e).startswith("Remote"):
            return ContentCredentials(found=True, strength=WEAK, error=_short(e),
                                      says="Content Credentials are stored remotely; not fetched (no network calls)")
        if b"c2pa" not in data:  # no manifest label anywhere: the file itself could not be parsed
            return ContentCredentials(says="no Content Credentials", error=f"not checked ({_short(e)})")
        return ContentCredentials(found=True, strength=WEAK, says=UNREADABLE, error=_short(e))
    return _describe(store, trust_list=anchors is not None)


def _trust_anchors() -> Optional[str]:
    """The PEM text of the file named by GANORIGIN_C2PA_TRUST_ANCHORS (None when unset).

    Raises:
        OSError: it cannot be read. ValueError: it is not a PEM file of certificates, or over 1 MiB.
    """
    path = os.environ.get(TRUST_ANCHORS_ENV)
    if not path:
        return None
    with open(path, "rb") as f:
        pem = f.read(MAX_TRUST_ANCHORS_BYTES + 1)
    if len(pem) > MAX_TRUST_ANCHORS_BYTES or b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError("not a PEM file of root certificates of at most 1 MiB")
    return pem.decode("ascii", "replace")


def _settings(anchors: Optional[str]) -> dict:
    settings = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False, "verify_trust": True}}
    if anchors is not None:
        settings["trust"] = {"trust_anchors": anchors}
    return settings


def _describe(store: dict, *, trust_list: bool) -> ContentCredentials:
    manifests, label = _dict(store.get("manifests")), store.get("active_manifest")
    manifest = _dict(manifests.get(label)) if isinstance(label, str) else {}
    if not manifest:
        return ContentCredentials(found=True, strength=WEAK, says=UNREADABLE, error="the manifest store has no active manifest")
    actions, agent, source_type = _actions(manifest)
    ingredients = tuple(_ingredients(manifest, manifests))
    signature = _dict(manifest.get("signature_info"))
    state = store.get("validation_state") if isinstance(store.get("validation_state"), str) else None
    codes = tuple(_failure_codes(store))
    intact = state in ("Valid", "Trusted")
    trusted = state == "Trusted"
    fields = dict(
        found=True,
        claim_generator=_claim_generator(manifest),
        signer=clean_text(signature.get("common_name")),
        issuer=clean_text(signature.get("issuer")),
        signing_time=clean_text(signature.get("time")),
        actions=actions,
        software_agent=agent,
        digital_source_type=source_type,
        ingredients=ingredients,
        validation="trusted" if trusted else "valid" if intact else "invalid" if state else None,
        validation_state=state,
        status_codes=codes,
        problems=tuple(dict.fromkeys(STATUS_MEANINGS.get(code, code) for code in codes if code != UNTRUSTED or trust_list)),
        trust_list=trust_list,
    )
    ai_ingredient = next((i["title"] or "untitled" for i in ingredients if i["digital_source_type"] in AI_SOURCE_TYPES), None)
    ai = source_type in AI_SOURCE_TYPES or ai_ingredient is not None
    strong = intact and (trusted or not trust_list)
    says = _says(fields, intact=intact, ai_ingredient=ai_ingredient)
    return ContentCredentials(strength=STRONG if strong else WEAK, says=says, ai_generated=ai, **fields)


def _says(f: dict, *, intact: bool, ai_ingredient: Optional[str]) -> str:
    source_type = f["digital_source_type"]
    if source_type:
        claim = f"say {describe_source_type(source_type)}"
    elif ai_ingredient:
        claim = f"say an ingredient ({ai_ingredient!r}) is AI-generated"
    else:
        claim = f"record {', '.join(f['actions']) or 'no actions'} and name no digital source type"
    tool = f["software_agent"] or f["claim_generator"]
    made_with = f"; tool: {tool}" if tool else ""
    who = f["issuer"] or f["signer"] or "an unnamed signer"
    if not intact:
        return f"Content Credentials {claim}{made_with}; issuer: {who}; but {'; '.join(f['problems']) or 'they do not validate'}"
    if f["validation"] == "trusted":
        trust = "a trusted signer"
    elif f["trust_list"]:
        trust = "signer NOT on the configured trust list"
    else:
        trust = "signer not checked against a trust list: none configured"
    return f"Signed Content Credentials {claim}{made_with}; issuer: {who} ({trust})"


def _actions(manifest: dict) -> tuple[tuple, Optional[str], Optional[str]]:
    """(action names, the first software agent, the digital source type: an AI one if any action has one)."""
    names, agents, source_types = [], [], []
    for assertion in _list(manifest.get("assertions")):
        assertion = _dict(assertion)
        if not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in _list(_dict(assertion.get("data")).get("actions")):
            action = _dict(action)
            if name := clean_text(action.get("action"), 80):
                names.append(name)
            agent = action.get("softwareAgent")
            if agent := clean_text(_dict(agent).get("name") if isinstance(agent, dict) else agent, 120):
                agents.append(agent)
            if isinstance(action.get("digitalSourceType"), str):
                source_types.append(source_type_code(action["digitalSourceType"]))
    source_type = next((t for t in source_types if t in AI_SOURCE_TYPES), source_types[0] if source_types else None)
    return tuple(dict.fromkeys(names)), (agents[0] if agents else None), clean_text(source_type, 80)


def _ingredients(manifest: dict, manifests: dict):
    """Each ingredient's title, relationship and digital source type (from its own manifest, if it has one)."""
    for ingredient in _list(manifest.get("ingredients"))[:MAX_INGREDIENTS]:
        ingredient = _dict(ingredient)
        yield {
            "title": clean_text(ingredient.get("title"), 120),
            "relationship": clean_text(ingredient.get("relationship"), 40),
            "digital_source_type": _source_type_of(ingredient.get("active_manifest"), manifests),
        }


def _source_type_of(label, manifests: dict) -> Optional[str]:
    """The digital source type a manifest states, or an AI one stated anywhere among its ingredients'
    manifests (each manifest visited once)."""
    seen, queue, own = set(), [label], None
    while queue and len(seen) < MAX_MANIFESTS_VISITED:
        label = queue.pop(0)
        if not isinstance(label, str) or label in seen:
            continue
        seen.add(label)
        manifest = _dict(manifests.get(label))
        source_type = _actions(manifest)[2] if manifest else None
        if source_type in AI_SOURCE_TYPES:
            return source_type
        own = own or source_type
        queue += [_dict(i).get("active_manifest") for i in _list(manifest.get("ingredients"))[:MAX_INGREDIENTS]]
    return own


def _claim_generator(manifest: dict) -> Optional[str]:
    info = _list(manifest.get("claim_generator_info"))
    if info and isinstance(info[0], dict):
        name, version = info[0].get("name"), info[0].get("version")
        return clean_text(f"{name} {version}" if name and version else name, 120)
    return clean_text(manifest.get("claim_generator"), 120)


def _failure_codes(store: dict):
    """The failure codes of the active manifest, then those c2pa lists for the whole store (ingredients too)."""
    active = _dict(_dict(store.get("validation_results")).get("activeManifest")).get("failure")
    entries = _list(active) + _list(store.get("validation_status"))
    codes = (_dict(entry).get("code") for entry in entries)
    return dict.fromkeys(code for code in codes if isinstance(code, str))


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _short(error: Exception) -> str:
    return clean_text(str(error) or type(error).__name__, 240)
