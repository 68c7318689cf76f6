"""``latent-agents plan``: before hours of GPU time, check everything a run needs and say what it would do.

It builds nothing and loads no model. It checks the base model is in the local cache, the device exists, each
OpenAI-compatible endpoint the preset uses answers (and its API key is set), and the free disk covers an estimate
of what the stages still to build will write; then it lists every stage as cached, damaged or to build (a stale one
with what changed since it was built), with the device and dtype. Other parts of the project add checks by
appending to `CHECKS` (e.g. datasets a benchmark needs).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlparse

from analyses.models import HF_SCHEME, resolve_model
from analyses.reproduce import EXPERIMENTS, experiment_reads
from analyses.validate import validate_preset
from training.errors import PresetError
from training.layout import RunLayout
from training.presets import Preset
from training.pipeline import Run
from training.stages import status_now

ENDPOINT_TIMEOUT_S = 2.0
DISK_MARGIN = 1.2  # checkpoints, tokenizers, logs and JSON beside the weights
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Finding:
    """One check's outcome: ``detail`` is one sentence (what was found, or what is wrong and how to fix it)."""

    check: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class StagePlan:
    """One stage of the run: its name, directory, status (``cached`` / ``to build``), why, and an estimate of
    the bytes it writes (model weights; 0 for stages that write none)."""

    name: str
    path: Path
    status: str
    why: str = ""
    writes_bytes: int = 0


def stage_status(run: Run, name: str) -> tuple[str, str]:
    """``(status, why)`` of stage ``name`` (``sft/main``, ``eval``, ``analyses/malicious``...) of ``run``: ``cached``
    when its manifest's fingerprint matches what it would read now, ``damaged`` when a file it wrote or reads was
    altered, else ``to build`` with why (stale: what changed; or a killed attempt it resumes from).

    Args:
        run: The run (`training.pipeline.Run`).
        name: The stage: ``<kind>`` or ``<kind>/<experiment>``, ``analyses/<experiment>`` for an experiment.

    Returns:
        ``(status, why)``: ``cached``, ``damaged`` or ``to build``, and the reason (``""`` when there is none).

    Example:
        >>> stage_status(Run(preset, "runs/toy"), "sft/main")  # doctest: +SKIP
        ('cached', '')
    """
    kind, _, exp = name.partition("/")
    if kind == "analyses":
        state, why = status_now(run.layout.analysis(exp), **experiment_reads(exp, run.preset, run.dir))
    else:
        state, why = run.status(kind, exp or None)
    if state in ("cached", "damaged"):
        return state, why
    return "to build", {"stale": f"stale: {why}", "resumable": "resumes from a killed attempt"}.get(state, "")


def _model_dir(preset: Preset) -> Path | None:
    """The local base model dir of a real-model preset, or None (toy world, or not in the cache)."""
    path = preset.model.path
    if not path:
        return None
    if path.startswith(HF_SCHEME):
        try:
            path = resolve_model(preset).model.path
        except PresetError:
            return None
    return Path(path).expanduser()


def _safetensors_params(model_dir: Path) -> int | None:
    """The parameter count from the safetensors headers (read without loading any weights)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with f.open("rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def _toy_params(sections: dict) -> int:
    """The toy base model's parameter count from ``[base]`` and ``[tokenizer]`` (attention, MLP, embeddings)."""
    base, tok = sections["base"], sections["tokenizer"]
    d = base.d_model
    return base.n_layers * (4 * d * d + 3 * d * base.d_mlp) + 2 * tok.vocab_size * d


def model_bytes(preset: Preset, sections: dict) -> int | None:
    """Bytes of one full copy of the model in the dtype the stages save; None when the model is not found.

    Args:
        preset: The loaded preset.
        sections: Its validated sections (`analyses.validate.validate_preset`; the toy's from ``base`` and
            ``tokenizer``).

    Returns:
        The parameter count × 4 bytes in float32, × 2 in any other dtype; None when a real model's weights are not
        found.

    Example:
        >>> preset = load_preset("toy")  # doctest: +SKIP
        >>> model_bytes(preset, validate_preset(preset))  # doctest: +SKIP
        5242880
    """
    model_dir = _model_dir(preset)
    params = _toy_params(sections) if not preset.model.path else (
        _safetensors_params(model_dir) if model_dir and model_dir.is_dir() else None)
    if params is None:
        return None
    return params * (4 if preset.model.resolved_dtype() == "float32" else 2)


def stages(preset: Preset, run_dir: Path) -> list[StagePlan]:
    """Every stage ``reproduce`` runs for ``preset`` in ``run_dir``, in order, with its status and an estimate
    of the model weights it writes (a merged model per fine-tuning stage, one per stage-2 phase as well).

    Args:
        preset: The loaded preset.
        run_dir: The run directory (need not exist).

    Returns:
        One `StagePlan` per stage, in the order ``reproduce`` builds them; a cached stage writes 0 bytes.

    Raises:
        PresetError: the preset fails validation.

    Example:
        >>> [s.name for s in stages(load_preset("toy"), Path("runs/toy"))][:3]  # doctest: +SKIP
        ['base', 'debates/main', 'debates/evil']
    """
    sections = validate_preset(preset)
    layout = RunLayout.of(preset, run_dir)
    copy = model_bytes(preset, sections) or 0
    exps = sections["experiments"]
    n_phases = len(sections["internalize"].phases)
    plan: list[tuple[str, Path, int]] = []
    if not preset.model.path:
        plan.append(("base", layout.toy_base, copy))
    plan += [(f"debates/{e}", layout.debates(e), 0) for e in exps.names]
    plan += [(f"sft/{e}", layout.sft(e), copy) for e in exps.names]
    plan.append((f"debategpt/{exps.table1}", layout.debategpt(exps.table1), copy))
    plan += [(f"internalize/{e}", layout.internalize(e), copy * (n_phases + 1)) for e in exps.names]
    plan.append((f"single_rl/{exps.table1}", layout.single_rl(exps.table1), copy * (n_phases + 1)))
    plan.append(("eval", layout.eval, 0))
    plan += [(f"analyses/{name}", layout.analysis(name), 0) for name in EXPERIMENTS]
    try:
        run = Run(resolve_model(preset), run_dir)
    except PresetError:  # the model is not in the cache: check_model says so; stages read the path as written
        run = Run(preset, run_dir)
    out = []
    for name, path, size in plan:
        status, why = stage_status(run, name)
        out.append(StagePlan(name, path, status, why, size if status != "cached" else 0))
    return out


# ------------------------------------------------------------------------------------------------ checks
def check_model(preset: Preset, run_dir: Path) -> list[Finding]:
    """The base model: trained from scratch (toy), or a local dir / cached ``hf://`` snapshot with config.json.

    Args:
        preset: The loaded preset (``[model] path``).
        run_dir: The run directory (unused; every check takes it).

    Returns:
        One ``model`` finding: where the model is, or what is missing and how to fix it.

    Example:
        >>> from pathlib import Path
        >>> from analyses.plan import check_model
        >>> from training.presets import Preset
        >>> check_model(Preset("toy", Path("toy.toml"), {}), Path("runs/toy"))[0].detail
        'the toy world trains its own base model into the run dir'
    """
    path = preset.model.path
    if not path:
        return [Finding("model", True, "the toy world trains its own base model into the run dir")]
    try:
        local = Path(resolve_model(preset).model.path).expanduser()
    except PresetError as e:
        return [Finding("model", False, str(e))]
    if not (local / "config.json").is_file():
        return [Finding("model", False, f"[model] path {path!r} is not a local model dir with a config.json; "
                                         f"download the model there or fix the path")]
    where = f" (cached at {local})" if path.startswith(HF_SCHEME) else ""
    return [Finding("model", True, f"{path}{where}")]


def check_device(preset: Preset, run_dir: Path) -> list[Finding]:
    """The configured device exists here (``cuda`` needs torch to see a GPU).

    Args:
        preset: The loaded preset (``[model] device`` and ``dtype``).
        run_dir: The run directory (unused; every check takes it).

    Returns:
        One ``device`` finding: the device and dtype, or that torch sees too few CUDA devices here.

    Example:
        >>> check_device(load_preset("toy"), Path("runs/toy"))[0].detail  # doctest: +SKIP
        'cpu in float32'
    """
    cfg = preset.model
    device = cfg.resolved_device()
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            return [Finding("device", False, f"[model] device = {cfg.device!r} but torch sees "
                                             f"{torch.cuda.device_count()} CUDA device(s) here; set it to \"auto\" "
                                             f"or \"cpu\"")]
    return [Finding("device", True, f"{device} in {cfg.resolved_dtype()}"
                                    + (", gradient checkpointing" if cfg.gradient_checkpointing else ""))]


def check_endpoint(label: str, base_url: str, api_key_env: str = "OPENAI_API_KEY") -> list[Finding]:
    """An OpenAI-compatible endpoint answers ``GET <base_url>/models`` within 2 s, and its API key is set (a
    loopback server usually needs none). Any HTTP answer counts as reachable; 401/403 means the key is refused.

    Args:
        label: What uses the endpoint, for the table (e.g. ``[malicious] judge``).
        base_url: The endpoint, e.g. ``http://127.0.0.1:8000/v1``.
        api_key_env: The environment variable the key is read from (its value is never printed).

    Returns:
        Two findings: reachability and the key.

    Example:
        >>> CHECKS.append(lambda p, d: check_endpoint("[debate] source", p.data["debate"]["base_url"]))  # doctest: +SKIP
    """
    key = os.environ.get(api_key_env)
    loopback = urlparse(base_url).hostname in LOOPBACK
    if key:
        key_finding = Finding(f"{label} key", True, f"{api_key_env} is set")
    else:
        key_finding = Finding(f"{label} key", loopback, f"{api_key_env} is not set" + (
            " (a local server usually needs none)" if loopback else "; export it before the run"))
    url = base_url.rstrip("/") + "/models"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=ENDPOINT_TIMEOUT_S):
            reach = Finding(label, True, f"{base_url} answers")
    except urllib.error.HTTPError as e:
        refused = e.code in (401, 403)
        reach = Finding(label, not refused, f"{base_url} answers HTTP {e.code}"
                        + (f"; it refuses the key in {api_key_env}" if refused else ""))
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        reach = Finding(label, False, f"{base_url} cannot be reached within {ENDPOINT_TIMEOUT_S:.0f} s "
                                      f"({reason}); start the server or fix the base URL")
    return [reach, key_finding]


def check_judge(preset: Preset, run_dir: Path) -> list[Finding]:
    """The OpenAI-compatible endpoints the run talks to: the ``[malicious]`` trait judge, the ``[judge]`` GRPO
    reward judge (unless the run starts it itself with ``serve``) and any ``[debate] source = "model"`` endpoint,
    each checked once.

    Args:
        preset: The loaded preset.
        run_dir: The run directory (for each experiment's debate settings).

    Returns:
        Two findings per distinct endpoint (`check_endpoint`), its users' labels joined; ``[]`` when the run uses
        none.

    Example:
        >>> check_judge(load_preset("toy"), Path("runs/toy"))  # doctest: +SKIP
        []
    """
    sections = validate_preset(preset)
    endpoints: dict[str, tuple[list[str], str]] = {}

    def use(url: str, label: str, key_env: str) -> None:
        endpoints.setdefault(url, ([], key_env))[0].append(label)

    mal = sections["malicious"]
    if mal.judge == "openai":
        use(mal.judge_base_url or "https://api.openai.com/v1", "[malicious] judge", "OPENAI_API_KEY")
    reward = sections["judge"]
    if reward.kind == "openai" and not reward.serve:
        use(reward.base_url, "[judge]", reward.api_key_env)
    run = Run(preset, run_dir)
    for exp in run.experiments.names:
        debate = run.debate_config(exp)
        if debate.source == "model" and debate.base_url:
            use(debate.base_url, f"[debate] {exp}", debate.api_key_env)
    return [f for url, (labels, key) in endpoints.items() for f in check_endpoint(", ".join(labels), url, key)]


def check_disk(preset: Preset, run_dir: Path) -> list[Finding]:
    """Free space where the run dir is (or would be) against the weights the stages to build will write.

    Args:
        preset: The loaded preset.
        run_dir: The run directory (or where it would be created).

    Returns:
        One ``disk`` finding: free space against `DISK_MARGIN` × the weights the stages to build write; ok with the
        need unknown when a real model is not cached yet.

    Example:
        >>> check_disk(load_preset("toy"), Path("runs/toy"))[0].ok  # doctest: +SKIP
        True
    """
    where = Path(run_dir).resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    todo = [s for s in stages(preset, run_dir) if s.status != "cached"]
    need = int(sum(s.writes_bytes for s in todo) * DISK_MARGIN)
    if not preset.model.path or _model_dir(preset) is not None:
        ok = free >= need
        detail = f"{_size(free)} free at {where}; the stages to build write about {_size(need)}"
        return [Finding("disk", ok, detail + ("" if ok else f"; free {_size(need - free)} or choose another "
                                                             "--run-dir"))]
    return [Finding("disk", True, f"{_size(free)} free at {where}; the need is unknown until the model is cached")]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


CHECKS: list[Callable[[Preset, Path], Iterable[Finding]]] = [check_model, check_device, check_judge, check_disk]


def plan(preset: Preset, run_dir: str | Path, *, out: Callable[[str], None] = print) -> int:
    """Run every check in `CHECKS`, print them and the stage table, and return the exit status.

    Args:
        preset: The loaded preset (after ``extends`` and ``--set``).
        run_dir: The run directory the run would use (need not exist).
        out: Where lines go.

    Returns:
        0 when every check passes, 1 otherwise (each failing check is then one sentence at the end).

    Example:
        >>> plan(load_preset("smoke", ["sft.max_steps=2"]), "runs/smoke")  # doctest: +SKIP
        0
    """
    run_dir = Path(run_dir)
    findings = [f for check in CHECKS for f in check(preset, run_dir)]
    out(f"plan for preset {preset.name!r} ({' <- '.join(str(p) for p in reversed(preset.files)) or preset.path})")
    if preset.overrides:
        out(f"overrides: {' '.join(preset.overrides)}")
    out(f"run dir: {run_dir}")
    width = max(len(f.check) for f in findings)
    out("")
    out(f"{'check':<{width}}  {'':4}  finding")
    for f in findings:
        out(f"{f.check:<{width}}  {'ok' if f.ok else 'FAIL':4}  {f.detail}")
    rows = stages(preset, run_dir)
    width = max(len(s.name) for s in rows)
    out("")
    out(f"{'stage':<{width}}  {'status':8}  {'writes':>9}  note")
    for s in rows:
        size = _size(s.writes_bytes) if s.writes_bytes else ""
        out(f"{s.name:<{width}}  {s.status:8}  {size:>9}  {s.why}")
    failed = [f for f in findings if not f.ok]
    out("")
    if not failed:
        out(f"all {len(findings)} checks pass; {sum(s.status != 'cached' for s in rows)} of {len(rows)} stages "
            f"to build")
        return 0
    for f in failed:
        out(f"latent-agents plan: {f.check}: {f.detail}")
    return 1
