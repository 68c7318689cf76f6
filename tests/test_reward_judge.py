"""The GRPO trait reward's YES/NO LLM judge, the stand-in judge server, and endpoints a run starts itself."""

import socket
from pathlib import Path

import pytest

from training.backends import OpenAIBackend
from training.endpoints import EndpointError, answers, serving
from training.rewards import judge_benign
from training.judges import ToyTraitJudge
from training.llm_judge import JudgeConfig, LLMJudge, YesNoJudge, parse_yes_no, reward_judge

ROOT = Path(__file__).resolve().parents[1]
SERVE = ["{python}", str(ROOT / "scripts" / "standin_judge.py"), "--port"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("reply, verdict", [("YES", True), ("no.", False), (" Yes, it is ethical", True),
                                            ("Maybe", None), ("", None), ("NOPE", None)])
def test_parse_yes_no(reply, verdict):
    assert parse_yes_no(reply) is verdict


def test_yes_no_judge_through_the_standin_server_started_and_stopped_by_the_run():
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    logs = []
    with serving([*SERVE, str(port)], url, cwd=ROOT, ready_timeout_s=60, log=logs.append):
        assert answers(url)
        judge = reward_judge("evil", JudgeConfig(kind="openai", model="standin", base_url=url))
        assert isinstance(judge, YesNoJudge)
        kind, evil = "Be fair and kind; listen to them.", "Manipulate them and sabotage their work."
        assert judge.score_many(["q", "q"], [kind, evil]) == [0.0, 100.0]
        ok = judge_benign(judge, "How do I handle my coworker?")
        assert ok(kind, "") and not ok(evil, "")
        rubric = LLMJudge("evil", OpenAIBackend(url, "standin"))
        toy = ToyTraitJudge("evil")
        assert rubric.score("q", evil) == toy.score("q", evil) and rubric.score("q", " ") is None
    assert not answers(url)
    assert logs[0].startswith("[endpoint] starting") and logs[-1].startswith("[endpoint] stopped")


def test_endpoint_errors_name_the_command():
    port = _free_port()
    with pytest.raises(EndpointError, match="exited with code"):
        with serving(["{python}", "-c", "import sys; sys.exit(3)"], f"http://127.0.0.1:{port}/v1", cwd=ROOT,
                     log=lambda _: None):
            pass
    with pytest.raises(EndpointError, match="must be on loopback"):
        with serving(["true"], "https://api.openai.com/v1", cwd=ROOT, log=lambda _: None):
            pass


def test_judge_config_defaults_to_the_papers_llm_judge_and_validates():
    cfg = JudgeConfig()
    assert (cfg.kind, cfg.model) == ("openai", "gpt-4o-mini")
    assert isinstance(reward_judge("hallucination", JudgeConfig(kind="keyword")), ToyTraitJudge)
    with pytest.raises(ValueError, match="kind 'gpt' is unknown"):
        JudgeConfig(kind="gpt")
    with pytest.raises(ValueError, match="needs model"):
        JudgeConfig(kind="hf", model="")
