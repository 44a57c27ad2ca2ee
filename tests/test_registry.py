"""The weights registry is the one place each weight file is described (issue 14).

Proves that the documents built from it cannot drift (``weights/README.md``'s table and the Space
front matter are what the registry generates), that every record names a real reader and a
sensible source, that the defaults of :class:`WeightSources` come from it, and that every
non-optional record resolves from a folder of test weights written in the real formats.
"""

from __future__ import annotations

import importlib
import re

import pytest

from conftest import ROOT
from ganorigin.hub import WEIGHTS, WeightSources, resolve
from ganorigin.hub.registry import SOURCES, space_front_matter, weight_file, weights_table


def _front_matter() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("---\n")[1]


def test_weights_readme_table_is_the_registry():
    assert weights_table() in (ROOT / "weights" / "README.md").read_text()


def test_space_front_matter_is_the_registry():
    front = _front_matter()
    listed = {key: re.findall(rf"^{key}:\n((?:  - .*\n)+)", front, re.MULTILINE) for key in ("models", "preload_from_hub")}
    expected = space_front_matter()
    for key, values in expected.items():
        assert listed[key], f"README front matter has no {key}"
        assert [line[4:] for line in listed[key][0].splitlines()] == values


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_every_record_names_a_real_reader_and_a_source(name):
    record = weight_file(name)
    parts = record.read_by.split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest importable prefix, then attributes
        try:
            reader = importlib.import_module(".".join(parts[:split]))
            break
        except ModuleNotFoundError:
            continue
    for attribute in parts[split:]:
        reader = getattr(reader, attribute)
    assert callable(reader), record.read_by
    source = SOURCES[record.source]
    assert (source.repo_id is None) != (source.url is None), "a source is a Hub repo or a URL"
    assert record.licence and record.description
    if record.sha256 is not None:
        assert re.fullmatch(r"[0-9a-f]{64}", record.sha256)


def test_unknown_record_names_list_the_known_ones():
    with pytest.raises(KeyError, match="e4e.ffhq_encode"):
        weight_file("e4e.nope")


def test_source_defaults_come_from_the_registry(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("GANORIGIN_"):
            monkeypatch.delenv(name)
    sources = WeightSources.from_env()
    assert sources.repo_id == SOURCES["attribution"].repo_id and sources.clip_repo_id == SOURCES["clip"].repo_id
    assert sources.ufd_head_url == SOURCES["ufd"].url and sources.ufd_head_url.endswith("/" + WEIGHTS["ufd.fc"].filename)
    assert sources.ufd_head_sha256 == WEIGHTS["ufd.fc"].sha256


def test_every_needed_record_resolves_from_a_weights_folder(sources, weights_dir):
    files = resolve(sources)
    needed = [name for name, record in WEIGHTS.items() if not record.optional]
    for name in needed:
        path = files.get(name)
        assert path is not None and path.parent == weights_dir and path.name in (WEIGHTS[name].filename,
                                                                                  *WEIGHTS[name].alternatives)
