"""A minimal OpenAI-compatible chat-completions server for a local HF model dir, on loopback only.

It lets anything that speaks ``/v1/chat/completions`` (`OpenAIBackend`, other tools) use a toy or fine-tuned
model, with ``usage`` token counts in every response. One request is generated at a time.

    python -m training.serve runs/toy/base --port 8000
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from training.backends import BackendError, HFBackend, count_chat_tokens

LOOPBACK = ("127.0.0.1", "localhost")


class ChatServer:
    """Serves ``backend`` at ``http://host:port/v1``; ``port=0`` picks a free port. Use as a context manager."""

    def __init__(self, backend: HFBackend, *, model_name: str = "local", host: str = "127.0.0.1", port: int = 0):
        if host not in LOOPBACK:
            raise ValueError(f"host {host!r} is not loopback; the server only binds to one of {list(LOOPBACK)}")
        self.backend, self.model_name = backend, model_name
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "ChatServer":
        """Serve in a background thread.

        Returns:
            The server itself, now serving at `url`.

        Example:
            >>> server = ChatServer(HFBackend("runs/toy/base")).start()  # doctest: +SKIP
            >>> server.url  # doctest: +SKIP
            'http://127.0.0.1:41235/v1'
        """
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="chat-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving (joining the background thread, if one runs) and release the port.

        Returns:
            None.

        Example:
            >>> server.close()  # doctest: +SKIP
        """
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> "ChatServer":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def complete_chat(self, body: dict) -> dict:
        """The chat-completion response object for one request body.

        Args:
            body: The request's JSON body: ``messages``, and optionally ``max_tokens`` (or ``max_completion_tokens``),
                ``temperature``, ``top_p``, ``seed`` and ``n`` (only 1).

        Returns:
            The OpenAI-style response: ``id``, ``object``, ``created``, ``model``, one choice (``finish_reason``
            ``stop`` or ``length``) and ``usage``.

        Raises:
            ValueError: no messages, ``n`` other than 1, or a prompt that fills the model's context.

        Example:
            >>> body = {"messages": [{"role": "user", "content": "What is 1+2*3+4-5*6?"}]}  # doctest: +SKIP
            >>> server.complete_chat(body)["usage"]  # doctest: +SKIP
            {'prompt_tokens': 30, 'completion_tokens': 31, 'total_tokens': 61}
        """
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list of {role, content} objects")
        if body.get("n", 1) != 1:
            raise ValueError("only n=1 is supported")
        max_new = int(body.get("max_completion_tokens") or body.get("max_tokens") or self.backend.max_new_tokens)
        n_prompt = count_chat_tokens(self.backend.tokenizer, messages)
        if not self.backend.fits(n_prompt):
            raise ValueError(f"the prompt has {n_prompt} tokens, which fill the model's context of "
                             f"{self.backend.n_ctx} tokens")
        with self._lock:
            b = self.backend
            saved = b.temperature, b.top_p
            b.temperature = float(body.get("temperature", b.temperature))
            b.top_p = float(body.get("top_p", b.top_p))
            try:
                c = b.chat([messages], seed=int(body.get("seed", 0)), max_new_tokens=max_new)[0]
            finally:
                b.temperature, b.top_p = saved
        finish = "stop" if c.ids and c.ids[-1] in b.stop_ids else "length"
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": c.input_tokens, "completion_tokens": c.output_tokens,
                          "total_tokens": c.input_tokens + c.output_tokens}}


class JSONHandler(BaseHTTPRequestHandler):
    """A request handler that answers with JSON bodies (``_send``); the chat server and the stand-in judge share it."""

    def _send(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _handler(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(JSONHandler):

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]})
            else:
                self._error(404, f"unknown path {self.path}; try POST /v1/chat/completions")

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"unknown path {self.path}; try POST /v1/chat/completions")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._send(200, server.complete_chat(body))
            except (ValueError, TypeError, BackendError) as e:
                self._error(400, str(e))
            except Exception as e:  # report, don't kill the connection without an answer
                self._error(500, f"{type(e).__name__}: {e}")

        def log_message(self, format: str, *args) -> None:  # keep test and CLI output quiet
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    """The ``python -m training.serve`` command: serve a local model dir until Ctrl-C.

    Args:
        argv: The command-line arguments (``None``: ``sys.argv[1:]``): ``model_dir`` and the options ``--port``,
            ``--host``, ``--max-new-tokens`` and ``--name``.

    Returns:
        None, once stopped.

    Example:
        >>> main(["runs/toy/base", "--port", "8000"])  # doctest: +SKIP
        serving runs/toy/base at http://127.0.0.1:8000/v1 (Ctrl-C to stop)
    """
    ap = argparse.ArgumentParser(description="Serve a local HF model dir as an OpenAI-compatible chat endpoint.")
    ap.add_argument("model_dir")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1", choices=LOOPBACK)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--name", default=None, help="model name reported to clients (default: the dir name)")
    args = ap.parse_args(argv)
    backend = HFBackend(args.model_dir, max_new_tokens=args.max_new_tokens)
    server = ChatServer(backend, model_name=args.name or Path(args.model_dir).name, host=args.host, port=args.port)
    print(f"serving {args.model_dir} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
