"""A checkpoint's ``config.json``, read without transformers: enough for the driver to
check a model reference (that it resolves, and to a supported ``model_type``).

Importing transformers (and torch under it) costs seconds that every run would pay
on the driver before its first row moves, and only the model actors need it. So the
driver reads the file itself: from a local folder, or from the hub through
``huggingface_hub`` (the same cache, token and ``HF_HUB_OFFLINE`` that transformers'
``from_pretrained`` uses). The actors still load the configuration with transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_model_config(location: str, revision: str | None = None) -> dict[str, Any]:
    """The ``config.json`` of the checkpoint at `location` (a folder or a hub id)."""
    if Path(location).is_dir():
        path = Path(location) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{location} has no config.json")
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(location, "config.json", revision=revision))
    config = json.loads(path.read_text())
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{path.name} of {location} does not name a model_type")
    return config
