"""The OpenAI-compatible server and client: a real HTTP round trip on 127.0.0.1 with the tiny Llama."""

import json
import urllib.error
import urllib.request

import pytest

from training.backends import AgentRequest, BackendError, HFBackend, OpenAIBackend
from training.prompts import round1_messages
from training.runner import run_debates
from training.serve import ChatServer


@pytest.fixture(scope="module")
def local(tiny_model_dirs):
    return HFBackend(tiny_model_dirs["llama"], max_new_tokens=12)


@pytest.fixture(scope="module")
def server(local):
    with ChatServer(local, model_name="tiny") as s:
        yield s


def test_http_backend_matches_local_generation(server, local):
    msgs = [round1_messages(p, "1+2*3+4-5*6") for p in ("analyst", "critic", "programmer")]
    reqs = [AgentRequest("analyst", "1+2*3+4-5*6", "arithmetic", m) for m in msgs]
    remote = OpenAIBackend(server.url, "tiny", max_new_tokens=12).generate(reqs)
    assert remote == local.generate(reqs)
    assert all(r.input_tokens > 100 and 0 < r.output_tokens <= 12 for r in remote)


def test_response_has_usage_and_bad_requests_get_400(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    req = urllib.request.Request(server.url + "/chat/completions", data=json.dumps(body).encode(), method="POST")
    data = json.loads(urllib.request.urlopen(req, timeout=30).read())
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]
    assert data["choices"][0]["finish_reason"] in ("stop", "length")
    bad = urllib.request.Request(server.url + "/chat/completions", data=b'{"messages": []}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(bad, timeout=30)
    assert e.value.code == 400 and b"non-empty list" in e.value.read()


def test_debate_through_the_endpoint(server):
    backend = OpenAIBackend(server.url, "tiny", max_new_tokens=6)
    records = run_debates(["1+2*3+4-5*6", "2+3*4+5-6*7"], backend, n_rounds=1)
    assert all(len(r.calls) == 3 and r.total_tokens > 0 for r in records)
    with pytest.raises(BackendError, match="HTTP 400: the prompt has .* tokens, which fill the model's context of 256"):
        run_debates(["1+2*3+4-5*6"], backend, early_stop=False)  # round 2 outgrows the tiny model's context


def test_loopback_only_and_unreachable_endpoint(local):
    with pytest.raises(ValueError, match="not loopback"):
        ChatServer(local, host="0.0.0.0")
    s = ChatServer(local)
    url = s.url
    s.close()
    req = AgentRequest("neutral", "1+1", "arithmetic", round1_messages("neutral", "1+1"))
    with pytest.raises(BackendError, match="cannot get a chat completion"):
        OpenAIBackend(url, "tiny", timeout_s=5).generate([req])
