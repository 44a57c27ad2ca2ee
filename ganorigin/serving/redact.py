"""What a server shows a user names files and settings, never this server's directories."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Optional


def unavailable_text(error: Exception) -> str:
    """What a user is told when the model is not available: its first line, and where the reason is (it is for
    the operator: ``/health``, the page's banner, the log). The same on every entry point."""
    first, _, why = str(error).partition("\n")
    return f"{first} GET /health says why." if why else first


def public_text(text: Optional[str]) -> Optional[str]:
    """``text`` with this server's directories replaced by what configures them, for showing to users.

    ``/data/w/e4e_ffhq_encode.pt`` becomes ``$GANORIGIN_WEIGHTS_DIR/e4e_ffhq_encode.pt``; a path in
    any other existing directory keeps only its file name (``…/name``). URLs and Hub repo ids are
    left as they are.
    """
    if text is None:
        return None
    for folder, label in _known_folders():
        text = re.sub(_PATH_START + re.escape(folder) + r"(?![\w.-])", lambda _: label, text)
    return re.sub(_PATH_START + r"/[\w.@+~-]+(?:/[\w.@+~-]+)*", _hide_directories, text)


# Where a server path can begin: not inside a word, a URL, a label or another path.
_PATH_START = r"(?<![\w.:/$~>…-])"


def _known_folders() -> list[tuple[str, str]]:
    """(folder, label) for the directories messages may name, longest first."""
    from huggingface_hub import constants as hf_constants

    env = os.environ.get
    labels = [
        (env("GANORIGIN_WEIGHTS_DIR"), "$GANORIGIN_WEIGHTS_DIR"),
        (env("GANORIGIN_CACHE_DIR"), "$GANORIGIN_CACHE_DIR"),
        (hf_constants.HF_HUB_CACHE, "<Hugging Face cache>"),
        (hf_constants.HF_HOME, "$HF_HOME"),
        (tempfile.gettempdir(), "<temp>"),
        (os.getcwd(), "<app folder>"),
        (str(Path.home()), "~"),
    ]
    pairs = {}
    for folder, label in labels:
        if folder:
            for form in (str(Path(folder).expanduser()).rstrip("/"), os.path.realpath(Path(folder).expanduser())):
                if len(form) > 1:
                    pairs.setdefault(form, label)
    return sorted(pairs.items(), key=lambda pair: -len(pair[0]))


def _hide_directories(match: re.Match) -> str:
    """``/srv/x/file`` -> ``…/file`` when ``/srv`` exists here; placeholders like ``/that/folder`` stay."""
    path = match.group(0)
    top = "/" + path.split("/")[1]
    return f"…/{Path(path).name}" if os.path.exists(top) else path
