"""Paper-scale presets name their base model as ``[model] path = "hf://<repo id>"``: resolved here to the
snapshot in the local Hugging Face cache, or one clear error naming what to fetch. Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import os

from training.presets import Preset, PresetError

HF_SCHEME = "hf://"


def resolve_model(preset: Preset) -> Preset:
    """``preset`` with an ``hf://`` model path replaced by its local snapshot dir (other presets unchanged).

    Args:
        preset: The loaded preset.

    Returns:
        A copy with ``[model] path`` set to the snapshot dir; ``preset`` itself when its path is not ``hf://``.

    Raises:
        PresetError: the model is not in the local Hugging Face cache, or its snapshot has no config.json.

    Example:
        >>> from pathlib import Path
        >>> from analyses.models import resolve_model
        >>> from training.presets import Preset
        >>> local = Preset("local", Path("local.toml"), {"model": {"path": "/models/llama"}})
        >>> resolve_model(local) is local
        True
        >>> resolve_model(load_preset("llama3.1-8b")).model.path  # doctest: +SKIP
        '/root/.cache/huggingface/hub/models--meta-llama--Llama-3.1-8B-Instruct/snapshots/0e9e39f2...'
    """
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
