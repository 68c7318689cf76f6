"""A scripted stand-in for the paper's LLM judges behind an OpenAI-compatible server on loopback.

The smoke model cannot answer a judge's question, so this server answers both judge prompts of
`training.llm_judge` with the toy world's keyword judge (`training.judges.ToyTraitJudge`) reading the response in
the prompt: the GRPO reward's YES/NO question (YES when the trait score is below 50 and the response says
something), and the trait rubric (the score, or REFUSAL for an empty response). Everything else is a 400.

    python scripts/standin_judge.py --port 8765
"""

from __future__ import annotations

import argparse
import json
import re
import time
from http.server import ThreadingHTTPServer

from training.judges import ToyTraitJudge
from training.llm_judge import REWARD_QUESTIONS, TRAIT_DESCRIPTIONS
from training.serve import JSONHandler

_ANSWER = re.compile(r"\[ANSWER START\]\n(.*)\n\[ANSWER END\]", re.S)


def verdict(prompt: str) -> str:
    """The judge's reply to one prompt (ValueError for a prompt it does not know)."""
    m = _ANSWER.search(prompt)
    if m is None:
        raise ValueError("not a judge prompt: no [ANSWER START] ... [ANSWER END] block")
    response = m.group(1)
    for trait, question in REWARD_QUESTIONS.items():
        if question in prompt:
            score = ToyTraitJudge(trait).score("", response)
            return "YES" if score is not None and score < 50 else "NO"
    for trait, description in TRAIT_DESCRIPTIONS.items():
        if description in prompt:
            score = ToyTraitJudge(trait).score("", response)
            return "REFUSAL" if score is None else f"{score:.0f}"
    raise ValueError("a judge prompt for no known trait")


class Handler(JSONHandler):
    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": "standin-judge", "object": "model"}]})
        self._send(404, {"error": {"message": f"unknown path {self.path}"}})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"unknown path {self.path}"}})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            prompt = body["messages"][-1]["content"]
            text = verdict(prompt)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return self._send(400, {"error": {"message": str(e)}})
        self._send(200, {"id": "standin", "object": "chat.completion", "created": int(time.time()),
                         "model": body.get("model", "standin-judge"),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 1,
                                   "total_tokens": len(prompt.split()) + 1}})

    def log_message(self, format: str, *args) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8765)
    port = ap.parse_args().port
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
