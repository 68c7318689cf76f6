"""Presets: typed sections with ranges, ``extends``, ``--set``, whole-preset validation on every command, and
``latent-agents plan``. No model is trained or loaded here."""

from __future__ import annotations

import http.server
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from analyses import plan as plan_module
from analyses.cli import main
from analyses.plan import Finding, check_endpoint
from analyses.validate import SECTIONS, validate_preset
from training.presets import CONFIG_DIR, ModelConfig, PresetError, load_preset, merge
from training.schema import PROBABILITY, bounds, parse_section

SFT = SECTIONS["sft"]


def preset_error(*args) -> str:
    """The message of the PresetError that loading and validating a preset raises."""
    with pytest.raises(PresetError) as e:
        validate_preset(load_preset(*args))
    return str(e.value)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ types and ranges
def test_wrong_type_names_the_key_the_value_and_the_type():
    msg = preset_error("smoke", ['sft.learning_rate="fast"'])
    assert msg == "preset 'smoke' [sft] learning_rate = \"fast\": expected a finite number > 0"


def test_negative_steps_are_out_of_range():
    msg = preset_error("smoke", ["sft.max_steps=-4"])
    assert msg == "preset 'smoke' [sft] max_steps = -4: expected an integer ≥ 1, or -1"


def test_nan_in_an_alpha_grid_is_named_by_position():
    msg = preset_error("smoke", ["malicious.alphas=[-5.0, 0.0, nan]"])
    assert msg.startswith("preset 'smoke' [malicious] alphas = [-5.0, 0.0, nan]: expected a non-empty list of "
                          "finite numbers")
    assert msg.endswith("; item 3 is nan")


def test_nan_anywhere_in_an_untyped_table_is_refused():
    msg = preset_error("smoke", ["internalize.phases=[{ budget = 1.0, steps = 2 }, { budget = nan, steps = 2 }]"])
    assert msg == "preset 'smoke': internalize.phases[2].budget is not a finite number; NaN and inf are never valid"


def test_experiment_overrides_are_checked_as_their_section():
    msg = preset_error("smoke", ["experiments.overrides={ evil = { sft = { max_steps = 0 } } }"])
    assert msg == "preset 'smoke' [experiments] overrides.evil.sft max_steps = 0: expected an integer ≥ 1, or -1"


def test_an_empty_grid_is_refused():
    msg = preset_error("smoke", ["subspaces.capability_alphas=[]"])
    assert "capability_alphas = []: expected a non-empty list" in msg and msg.endswith("it is empty")


def test_probability_out_of_range():
    msg = preset_error("smoke", ["teacher.p_keep_own=1.5"])
    assert msg == "preset 'smoke' [teacher] p_keep_own = 1.5: expected a finite number in [0, 1]"


def test_bool_is_not_an_integer_and_an_integer_is_a_float():
    assert "expected an integer" in preset_error("smoke", ["sft.lora_r=true"])
    cfg = load_preset("smoke", ["sft.learning_rate=1"]).section("sft", SFT)
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)


def test_model_section_is_typed():
    assert load_preset("smoke").model == ModelConfig()  # defaults: the toy world, fp32 on the CPU
    msg = preset_error("smoke", ['model.dtype="fp8"'])
    assert msg == 'preset \'smoke\' [model] dtype = "fp8": expected one of "float32", "bfloat16", "float16", "auto"'
    msg = preset_error("smoke", ['model.device="gpu"'])
    assert msg == 'preset \'smoke\' [model] device = "gpu": expected "auto", "cpu", "cuda" or "cuda:<n>"'
    cfg = load_preset("smoke", ['model.device="cuda:1"', 'model.dtype="auto"']).model
    assert (cfg.device, cfg.resolved_dtype()) == ("cuda:1", "bfloat16")


@dataclass(frozen=True)
class Inner:
    p: float = field(default=0.5, metadata=PROBABILITY)


@dataclass(frozen=True)
class Cfg:
    layer: int | None = field(default=None, metadata=bounds(ge=0))
    mode: Literal["a", "b"] = "a"
    pair: tuple[int, str] = (1, "x")
    counts: dict[str, int] = field(default_factory=dict, metadata=bounds(ge=1))
    inner: Inner = Inner()
    inners: tuple[Inner, ...] = ()


def test_schema_handles_optionals_literals_fixed_tuples_and_nested_tables():
    cfg = parse_section(Cfg, {"layer": 3, "pair": [2, "y"], "counts": {"a": 2}, "inner": {"p": 1},
                              "inners": [{"p": 0}]}, "[cfg]")
    assert cfg == Cfg(layer=3, pair=(2, "y"), counts={"a": 2}, inner=Inner(1.0), inners=(Inner(0.0),))
    cases = {
        "layer": (-1, "[cfg] layer = -1: expected an integer ≥ 0"),
        "mode": ("c", '[cfg] mode = "c": expected one of "a", "b"'),
        "pair": ([1], "[cfg] pair = [1]: expected a list of 2: an integer, a string; it has 1 items"),
        "counts": ({"a": 0}, "[cfg] counts = { a = 0 }: expected a table of integers, each ≥ 1; key a is 0"),
        "inner": ({"p": 2}, "[cfg] inner p = 2: expected a finite number in [0, 1]"),
        "inners": ([{"p": 1}, {"q": 1}], "[cfg] inners = [{ p = 1 }, { q = 1 }]: expected a list of tables with keys "
                                         "['p']; item 2 is { q = 1 } (unknown key q; valid: p)"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(PresetError) as e:
            parse_section(Cfg, {key: value}, "[cfg]")
        assert str(e.value) == message


def test_post_init_checks_still_speak_with_the_section_name():
    msg = preset_error("smoke", ['experiments.table1="nope"'])
    assert msg.startswith("preset 'smoke' [experiments]: table1 experiment 'nope' is not among names")


# ------------------------------------------------------------------------------------------------ unknown names
def test_unknown_section_is_named_with_the_valid_ones(tmp_path):
    typo = write(tmp_path / "typo.toml", (CONFIG_DIR / "smoke.toml").read_text().replace("[sft]\n", "[sfft]\n"))
    msg = preset_error(typo)
    assert msg.startswith("preset 'smoke': unknown section [sfft]; valid: ")
    assert ", sft, " in msg and ", model, " in msg


def test_unknown_key_is_named_with_the_valid_ones():
    msg = preset_error("smoke", ["sft.max_step=2"])
    assert msg.startswith("preset 'smoke' [sft]: unknown key max_step; valid: ") and "max_steps" in msg


def test_a_bare_value_where_a_section_belongs(tmp_path):
    msg = preset_error(write(tmp_path / "bare.toml", "sft = 3\n"))
    assert msg == "preset 'bare': sft = 3 must be a section [sft] (a table), not a bare value"


def test_meta_is_typed():
    assert preset_error("smoke", ["meta.seed=-1"]) == "preset 'smoke' [meta] seed = -1: expected an integer ≥ 0"


# ------------------------------------------------------------------------------------------------ --set
@pytest.mark.parametrize("item, expected", [
    ("sft.max_steps", "--set 'sft.max_steps' is not section.key=value; for example --set sft.max_steps=2"),
    ("max_steps=2", "--set 'max_steps=2' is not section.key=value; for example --set sft.max_steps=2"),
    ("sft..x=2", "--set 'sft..x=2' is not section.key=value; for example --set sft.max_steps=2"),
    ("sft.learning_rate=fast", "--set 'sft.learning_rate=fast': 'fast' is not a TOML value; write numbers as 2 or "
                               "1e-4, booleans as true, strings in double quotes (sft.learning_rate=\"...\"), "
                               "lists as [1, 2]"),
    ("sft.max_steps.x=2", "--set 'sft.max_steps.x=2': sft.max_steps is a value, not a table"),
])
def test_malformed_set_is_one_sentence(item, expected):
    with pytest.raises(PresetError) as e:
        load_preset("smoke", [item])
    assert str(e.value) == expected


def test_set_reaches_the_section_and_nested_tables_in_order():
    preset = load_preset("smoke", ["sft.max_steps=2", "sft.max_steps=3", "debate.n_debates.main=10",
                                   'meta.description="x"'])
    assert preset.section("sft", SFT).max_steps == 3
    assert preset.data["debate"]["n_debates"] == {"main": 10, "evil": 16, "hallucination": 16}
    assert preset.overrides == ("sft.max_steps=2", "sft.max_steps=3", "debate.n_debates.main=10", 'meta.description="x"')
    assert load_preset("smoke").section("sft", SFT).max_steps == 4  # the file is untouched


# ------------------------------------------------------------------------------------------------ extends
def test_extends_merges_tables_and_replaces_lists(tmp_path):
    write(tmp_path / "parent.toml", '[meta]\nname = "parent"\nseed = 3\n[sft]\nlora_r = 8\nmax_steps = 4\n'
                                    '[eval]\nseeds = [0, 1, 2]\n[debate]\nn_debates = { main = 5, evil = 2 }\n')
    child = write(tmp_path / "child.toml", 'extends = "parent"\n[sft]\nmax_steps = 2\n[eval]\nseeds = [7]\n'
                                           '[debate]\nn_debates = { evil = 9 }\n')
    preset = load_preset(child)
    assert preset.name == "child" and preset.seed == 3  # a name is never inherited; the rest is
    assert preset.data["sft"] == {"lora_r": 8, "max_steps": 2}
    assert preset.data["eval"]["seeds"] == [7]
    assert preset.data["debate"]["n_debates"] == {"main": 5, "evil": 9}
    assert preset.files == (tmp_path / "parent.toml", child)
    assert "extends" not in preset.data


def test_extends_a_configs_preset_by_name_and_by_relative_path(tmp_path):
    (tmp_path / "sub").mkdir()
    by_name = write(tmp_path / "a.toml", 'extends = "smoke"\n[sft]\nmax_steps = 2\n')
    by_path = write(tmp_path / "sub" / "b.toml", 'extends = "../a.toml"\n[sft]\nlora_r = 2\n')
    preset = load_preset(by_path)
    assert preset.files == (CONFIG_DIR / "smoke.toml", by_name, by_path)
    sft = validate_preset(preset)["sft"]
    assert (sft.max_steps, sft.lora_r, sft.lora_alpha) == (2, 2, 16)


def test_merge_does_not_touch_its_inputs():
    base = {"sft": {"a": 1, "b": [1]}}
    assert merge(base, {"sft": {"b": [2]}}) == {"sft": {"a": 1, "b": [2]}} and base == {"sft": {"a": 1, "b": [1]}}


def test_extends_cycle_is_refused(tmp_path):
    write(tmp_path / "a.toml", 'extends = "b"\n')
    write(tmp_path / "b.toml", 'extends = "c.toml"\n')
    write(tmp_path / "c.toml", 'extends = "a"\n')
    with pytest.raises(PresetError) as e:
        load_preset(tmp_path / "a.toml")
    assert str(e.value) == "preset 'a' extends itself through a extends b extends c extends a; remove one of these extends"


def test_extends_a_missing_preset(tmp_path):
    write(tmp_path / "a.toml", 'extends = "llama9"\n')
    with pytest.raises(PresetError) as e:
        load_preset(tmp_path / "a.toml")
    assert str(e.value).startswith(f"preset 'a' extends 'llama9', which is not found beside {tmp_path} or in "
                                   "configs/; valid: ")


@pytest.mark.parametrize("name", ["toy", "smoke", "llama3.1-8b", "qwen2.5-7b", "mistral-nemo"])
def test_shipped_presets_load_and_validate(name):
    sections = validate_preset(load_preset(name))
    assert set(sections) == {"meta", "model", *SECTIONS}
    assert sections["meta"].name == name


# ------------------------------------------------------------------------------------------------ the command line
def test_stage_command_with_a_typo_exits_2_with_one_line_and_builds_nothing(tmp_path, capsys):
    typo = write(tmp_path / "typo.toml", (CONFIG_DIR / "smoke.toml").read_text().replace("[sft]\n", "[sfft]\n"))
    run = tmp_path / "run"
    assert main(["sft", "--preset", str(typo), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("latent-agents: preset 'smoke': unknown section [sfft]; valid:")
    assert not run.exists()


@pytest.mark.parametrize("command", [["toy", "base"], ["debate"], ["internalize"], ["evaluate"], ["reproduce"]])
def test_every_command_validates_before_work(tmp_path, capsys, command):
    run = tmp_path / "run"
    assert main([*command, "--preset", "smoke", "--run-dir", str(run), "--set", "sft.max_steps=-4"]) == 2
    assert capsys.readouterr().err == "latent-agents: preset 'smoke' [sft] max_steps = -4: expected an integer ≥ 1, or -1\n"
    assert not run.exists()


def test_set_is_applied_before_the_model_path_is_resolved(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["sft", "--preset", "smoke", "--run-dir", str(run), "--set", 'model.path="hf://nobody/absent"']) == 2
    err = capsys.readouterr().err
    assert err.startswith("latent-agents: preset 'smoke' needs the model nobody/absent in the local Hugging Face cache")
    assert not run.exists()


def test_unknown_preset_is_one_line(capsys):
    assert main(["plan", "--preset", "nonexistent"]) == 2
    assert capsys.readouterr().err.startswith("latent-agents: unknown preset 'nonexistent'; valid: ")


def test_a_read_only_run_dir_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["debate", "--preset", "smoke", "--run-dir", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err == (f"latent-agents: cannot write stage base under {tmp_path / 'file'}: not a directory; choose a "
                   "writable run directory (--run-dir)\n")


def test_plan_on_an_empty_run_dir_lists_every_stage_to_build(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["plan", "--preset", "smoke", "--run-dir", str(run), "--set", "sft.max_steps=2"]) == 0
    out = capsys.readouterr().out
    stages = {line.split()[0]: line.split()[1:3] for line in out.splitlines()
              if line.split()[:1] and "/" in line.split()[0] or line.startswith(("base ", "eval "))}
    assert set(stages) == {"base", *(f"{s}/{e}" for s in ("debates", "sft", "internalize")
                                     for e in ("main", "evil", "hallucination")),
                           "debategpt/main", "single_rl/main", "eval", "analyses/agent_subspaces", "analyses/malicious"}
    assert all(v == ["to", "build"] for v in stages.values())
    assert "overrides: sft.max_steps=2" in out and "device  ok    cpu in float32" in out
    assert not run.exists()


def test_plan_marks_a_finished_stage_cached_and_fails_a_missing_model(tmp_path, capsys):
    from training.pipeline import Run
    from training.stages import run_stage

    run, model = tmp_path / "run", f'model.path="{tmp_path / "nope"}"'
    # a finished debates/main stage, keyed by what the pipeline reads for it
    reads = Run(load_preset("smoke", [model]), run).reads("debates", "main")
    run_stage(run / "debates" / "main", lambda d: (d / "transcripts.jsonl").write_text("{}\n") and {}, **reads,
              log=lambda line: None)
    assert main(["plan", "--preset", "smoke", "--run-dir", str(run), "--set", model]) == 1
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["debates/main", "cached"] for line in out.splitlines())
    main(["plan", "--preset", "smoke", "--run-dir", str(run), "--set", model, "--set", "debate.n_rounds=1"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("debates/main"))
    assert line.split()[1:3] == ["to", "build"] and line.endswith("stale: [debate] n_rounds 2 -> 1")
    assert out.splitlines()[-1] == (f"latent-agents plan: model: [model] path '{tmp_path / 'nope'}' is not a local "
                                    "model dir with a config.json; download the model there or fix the path")


class _Models(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == "/v1/models" else 404)
        self.end_headers()
        self.wfile.write(b'{"data": []}')

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    """A loopback server answering GET /v1/models; set ``_Models.status`` to choose its answer."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    _Models.status = 200


def test_endpoint_check_reaches_a_loopback_server_and_needs_no_key_there(endpoint, monkeypatch):
    monkeypatch.delenv("LA_TEST_KEY", raising=False)
    reach, key = check_endpoint("[malicious] judge", endpoint, "LA_TEST_KEY")
    assert (reach.ok, reach.detail) == (True, f"{endpoint} answers")
    assert (key.ok, key.detail) == (True, "LA_TEST_KEY is not set (a local server usually needs none)")


def test_endpoint_check_fails_on_a_refused_key_and_a_closed_port(endpoint, monkeypatch):
    monkeypatch.setenv("LA_TEST_KEY", "sk-secret")
    _Models.status = 401
    reach, key = check_endpoint("judge", endpoint, "LA_TEST_KEY")
    assert (reach.ok, reach.detail) == (False, f"{endpoint} answers HTTP 401; it refuses the key in LA_TEST_KEY")
    assert key.ok and "sk-secret" not in reach.detail + key.detail
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    reach, _ = check_endpoint("judge", closed, "LA_TEST_KEY")
    assert not reach.ok and reach.detail.startswith(f"{closed} cannot be reached within 2 s")


def test_plan_runs_checks_added_by_other_modules(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plan_module, "CHECKS", [*plan_module.CHECKS, lambda preset, run_dir: [
        Finding("datasets", False, "GSM8K is not in the local datasets cache")]])
    assert main(["plan", "--preset", "smoke", "--run-dir", str(tmp_path / "run")]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "latent-agents plan: datasets: GSM8K is not in the local datasets cache"


def test_plan_estimates_disk_from_a_local_model_without_loading_it(tiny_model_dirs, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model_dir = Path(tiny_model_dirs["llama"])
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().values())
    preset = load_preset("smoke", [f'model.path="{model_dir}"', 'model.dtype="bfloat16"'])
    assert plan_module.model_bytes(preset, validate_preset(preset)) == 2 * n_params
    rows = {s.name: s for s in plan_module.stages(preset, tmp_path / "run")}
    assert "base" not in rows and rows["sft/main"].writes_bytes == 2 * n_params
    assert rows["internalize/main"].writes_bytes == 2 * n_params * 3  # two phases in smoke, plus the final model
    assert rows["single_rl/main"].writes_bytes == 2 * n_params * 3 and "single_rl/evil" not in rows
    assert main(["plan", "--preset", "smoke", "--run-dir", str(tmp_path / "run"),
                 "--set", f'model.path="{model_dir}"']) == 0
    assert f"model   ok    {model_dir}" in capsys.readouterr().out


def test_plan_checks_every_endpoint_the_run_uses_once(endpoint, tmp_path, capsys, monkeypatch):
    """The reward judge and a model-written debate source at the same URL are one check naming both users."""
    monkeypatch.delenv("LA_TEST_KEY", raising=False)
    sets = ['judge.kind="openai"', f'judge.base_url="{endpoint}"', 'judge.api_key_env="LA_TEST_KEY"',
            'debate.source="model"', f'debate.base_url="{endpoint}"', 'debate.model="m"',
            'debate.api_key_env="LA_TEST_KEY"']
    assert main(["plan", "--preset", "smoke", "--run-dir", str(tmp_path / "run"),
                 *(a for s in sets for a in ("--set", s))]) == 0
    out = capsys.readouterr().out
    users = "[judge], [debate] main, [debate] evil, [debate] hallucination"
    assert sum(f"{endpoint} answers" in line for line in out.splitlines()) == 1
    assert any(line.startswith(users) for line in out.splitlines())
