"""Paper-scale presets name their base model as ``[model] path = "hf://<repo id>"``: resolved here to the
snapshot in the local Hugging Face cache, or one clear error naming what to fetch. Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import os

from training.presets import Preset, PresetError

HF_SCHEME = "hf://"


def resolve_model(preset: Preset) -> Preset:
    """``preset`` with an ``hf://`` model path replaced by its local snapshot dir (other presets unchanged)."""
    path = str(preset.data.get("model", {}).get("path", ""))
    if not path.startswith(HF_SCHEME):
        return preset
    repo = path[len(HF_SCHEME):]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants, snapshot_download

    try:
        local = snapshot_download(repo, local_files_only=True)
    except Exception:  # LocalEntryNotFoundError, or an invalid repo id: both mean "not here"
        raise PresetError(
            f"preset {preset.name!r} needs the model {repo} in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), and it is not there; fetch it on a machine with internet "
            f"(`huggingface-cli download {repo}`) or set [model] path to a local model dir") from None
    if not os.path.isfile(os.path.join(local, "config.json")):
        raise PresetError(f"preset {preset.name!r}: the cached snapshot {local} of {repo} has no config.json; "
                          f"re-fetch it with `huggingface-cli download {repo}`")
    data = {**preset.data, "model": {**preset.data["model"], "path": local}}
    return dataclasses.replace(preset, data=data)
