"""Generator settings that image tools write into PNG text chunks, JPEG comments and EXIF.

AUTOMATIC1111 / Forge (``parameters``: prompt, negative prompt, then ``Steps: …, Model: …``;
in JPEG / WebP the same text is the EXIF UserComment), Fooocus and SwarmUI (``parameters`` as
JSON), ComfyUI (``prompt`` and ``workflow`` JSON graphs), NovelAI (``Software: NovelAI``,
``Source``, ``Comment`` JSON), InvokeAI (``invokeai_metadata`` JSON, older ``sd-metadata``),
Midjourney (a description ending in ``Job ID: …``) and DALL·E (named in a description). The
generator and model are reported; the prompt only when asked for.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

from .evidence import Evidence
from .vocabulary import WEAK, clean_text, known_generator

MAX_PROMPT_CHARS = 4000
MODEL_FILE = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf|sft)$", re.IGNORECASE)
MAX_SETTINGS_CHARS = 64 * 1024  # of an AUTOMATIC1111 settings line
A1111_SETTINGS = {"Steps": "steps", "Sampler": "sampler", "Schedule type": "scheduler", "CFG scale": "cfg_scale",
                  "Seed": "seed", "Size": "size", "Model hash": "model_hash", "Version": "version"}
COMFY_MODEL_INPUTS = ("ckpt_name", "unet_name", "model_name", "base_ckpt_name")
COMFY_SAMPLER_INPUTS = {"seed": "seed", "noise_seed": "seed", "steps": "steps", "cfg": "cfg_scale",
                        "sampler_name": "sampler", "scheduler": "scheduler"}
MIDJOURNEY_VERSION = re.compile(r"--(v|version|niji)\s+([\d.]+)")


@dataclass(frozen=True, kw_only=True)
class GeneratorSettings(Evidence):
    """The settings a generator wrote into the file: which tool, which model, a few parameters."""

    generator: Optional[str] = None
    model: Optional[str] = None
    settings: dict = field(default_factory=dict)  # e.g. {"steps": "20", "sampler": "Euler a", "seed": "1"}
    source: Optional[str] = None  # where it was found, e.g. "PNG text 'parameters'"
    prompt: Optional[str] = None  # only when asked for


def read_generator_settings(texts: Iterable[tuple[str, str]], *, include_prompt: bool = False) -> GeneratorSettings:
    """The first recognised generator's settings among ``(keyword, text)`` pairs."""
    texts = list(texts)
    by_key = {}
    for key, text in texts:
        by_key.setdefault(key.lower(), text)
    for recognise in (_a1111_or_json, _comfyui, _novelai, _invokeai, _midjourney, _dalle):
        found = recognise(by_key, texts)
        if found is not None:
            generator, model, settings, source, prompt = found
            model = clean_text(model, 200)
            what = f"{generator}" + (f", model {model}" if model else "")
            return GeneratorSettings(
                found=True, strength=WEAK, ai_generated=True,
                says=f"Unsigned generator settings ({source}) name {what}",
                generator=generator, model=model,
                settings={k: clean_text(v, 120) for k, v in settings.items() if clean_text(v, 120)},
                source=source, prompt=clean_text(prompt, MAX_PROMPT_CHARS) if include_prompt else None,
            )
    return GeneratorSettings(says="no generator settings")


def _a1111_or_json(by_key: dict, texts: list):
    text, source = by_key.get("parameters"), "PNG text 'parameters'"
    if text is None and _looks_like_a1111(by_key.get("usercomment")):
        text, source = by_key["usercomment"], "EXIF UserComment"
    if text is None:
        return None
    data = _json(text)
    if isinstance(data, dict):
        return _json_parameters(data, source)
    if not _looks_like_a1111(text):
        return None
    start = text.rfind("\n", 0, text.rfind("Steps: ")) + 1  # the settings line is the last with "Steps: "
    prompt, settings_line = text[:start], text[start:].split("\n")[0]
    pairs = _a1111_pairs(settings_line)
    settings = {name: pairs[key] for key, name in A1111_SETTINGS.items() if key in pairs}
    version = pairs.get("Version", "")
    generator = "Forge" if version.startswith("f") else "AUTOMATIC1111 web UI (or a compatible tool)"
    return generator, pairs.get("Model"), settings, source, prompt.split("\nNegative prompt:")[0]


def _a1111_pairs(line: str) -> dict:
    """``Key: value, Key: "quoted, with \\"escapes\\"", …`` -> {key: value} (first value of a key wins)."""
    pairs, part, quoted, escaped = {}, [], False, False
    for char in line[:MAX_SETTINGS_CHARS] + ",":
        if char == "," and not quoted:
            key, colon, value = "".join(part).partition(":")
            if colon and key.strip():
                pairs.setdefault(key.strip(), value.strip().strip('"'))
            part = []
            continue
        if char == '"' and not escaped:
            quoted = not quoted
        escaped = char == "\\" and not escaped
        part.append(char)
    return pairs


def _looks_like_a1111(text: Optional[str]) -> bool:
    return bool(text) and "Steps: " in text and ("Sampler: " in text or "Seed: " in text)


def _json_parameters(data: dict, source: str):
    """``parameters`` written as JSON: SwarmUI (``sui_image_params``), Fooocus, or another tool."""
    params = data.get("sui_image_params")
    if isinstance(params, dict):
        return "SwarmUI", params.get("model"), _pick(params, {"seed": "seed", "steps": "steps", "cfgscale": "cfg_scale"}), \
            source, params.get("prompt")
    version = str(data.get("version", ""))
    generator = "Fooocus" if "fooocus" in version.lower() or "base_model" in data else (known_generator(version) or
                                                                                       "an unnamed tool (JSON parameters)")
    return generator, data.get("base_model") or data.get("model"), _pick(
        data, {"seed": "seed", "steps": "steps", "guidance_scale": "cfg_scale", "sampler": "sampler", "version": "version"}
    ), source, data.get("prompt")


def _comfyui(by_key: dict, texts: list):
    graph, workflow = _json(by_key.get("prompt")), _json(by_key.get("workflow"))
    if not isinstance(graph, dict) and not isinstance(workflow, dict):
        return None
    models, settings, prompts = [], {}, []
    nodes = [n for n in graph.values() if isinstance(n, dict)] if isinstance(graph, dict) else []
    for node in nodes:
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        models += [v for k, v in inputs.items() if k in COMFY_MODEL_INPUTS and isinstance(v, str)]
        if "sampler" in str(node.get("class_type", "")).lower() and not settings:
            settings = _pick(inputs, COMFY_SAMPLER_INPUTS)
        if str(node.get("class_type", "")).startswith("CLIPTextEncode") and isinstance(inputs.get("text"), str):
            prompts.append(inputs["text"])
    if not models and isinstance(workflow, dict):  # the UI graph: loaders keep the file name in widgets_values
        for node in workflow.get("nodes", []) if isinstance(workflow.get("nodes"), list) else []:
            values = node.get("widgets_values") if isinstance(node, dict) else None
            if "Loader" in str(node.get("type", "")) and isinstance(values, list):
                models += [v for v in values if isinstance(v, str) and MODEL_FILE.search(v)]
    if not nodes and not models:
        return None
    keys = " and ".join(k for k in ("prompt", "workflow") if k in by_key)
    return "ComfyUI", ", ".join(dict.fromkeys(models)) or None, settings, f"PNG text {keys!r}", "\n".join(prompts)


def _novelai(by_key: dict, texts: list):
    if (by_key.get("software") or "").strip() != "NovelAI":
        return None
    comment = _json(by_key.get("comment"))
    comment = comment if isinstance(comment, dict) else {}
    settings = _pick(comment, {"steps": "steps", "sampler": "sampler", "scale": "cfg_scale", "seed": "seed"})
    return "NovelAI", by_key.get("source"), settings, "PNG text 'Software', 'Source', 'Comment'", \
        comment.get("prompt") or by_key.get("description")


def _invokeai(by_key: dict, texts: list):
    data = _json(by_key.get("invokeai_metadata"))
    if isinstance(data, dict):
        model = data.get("model")
        name = (model.get("name") or model.get("model_name")) if isinstance(model, dict) else model
        settings = _pick(data, {"seed": "seed", "steps": "steps", "cfg_scale": "cfg_scale", "scheduler": "scheduler",
                                "app_version": "version"})
        return "InvokeAI", name, settings, "PNG text 'invokeai_metadata'", data.get("positive_prompt")
    legacy = _json(by_key.get("sd-metadata"))
    if isinstance(legacy, dict):
        image = legacy.get("image") if isinstance(legacy.get("image"), dict) else {}
        prompt = image.get("prompt")
        prompt = prompt[0].get("prompt") if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict) else prompt
        return "InvokeAI", legacy.get("model_weights"), _pick(image, {"seed": "seed", "steps": "steps", "cfg_scale":
                                                                      "cfg_scale", "sampler": "sampler"}), \
            "PNG text 'sd-metadata'", prompt
    if "dream" in by_key:
        return "InvokeAI", None, {}, "PNG text 'Dream'", by_key["dream"]
    return None


def _midjourney(by_key: dict, texts: list):
    for key, text in texts:
        prompt, marker, rest = text.partition("Job ID:")
        if not marker or key.lower() not in ("description", "comment", "usercomment"):
            continue
        version, job = MIDJOURNEY_VERSION.search(prompt), rest.split()[:1]
        model = None
        if version:
            model = f"niji {version.group(2)}" if version.group(1) == "niji" else f"Midjourney v{version.group(2)}"
        return "Midjourney", model, {"job_id": job[0]} if job else {}, f"{_where(key)} with a Midjourney Job ID", prompt
    return None


def _dalle(by_key: dict, texts: list):
    for key, text in texts:
        if key.lower() in ("description", "comment", "title", "usercomment") and known_generator(text) == "DALL·E":
            return "DALL·E", None, {}, f"{_where(key)} naming DALL·E", text
    return None


def _where(key: str) -> str:
    return {"comment": "a comment", "usercomment": "EXIF UserComment", "description": "a description"}.get(
        key.lower(), f"PNG text {key!r}")


def _pick(data: dict, names: dict) -> dict:
    """``data``'s values under ``names`` keys, renamed; only plain values."""
    return {new: str(data[old]) for old, new in names.items()
            if isinstance(data.get(old), (str, int, float)) and not isinstance(data.get(old), bool)}


def _json(text: Optional[str]):
    """``text`` as JSON, or None (damaged, or nested deeper than the parser's recursion limit)."""
    if not text or text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None
