"""A local stand-in for the PromptLayer API that honours the SDK's wire contract.

stdlib only, 127.0.0.1 on an ephemeral port. Modes, switchable while running:
- "ok":   answers like PromptLayer (`POST /log-request` -> 201 {"id": N}, ...)
- "500":  every request -> 500 {"message": "boom"}
- "hung": the handler holds the request without answering until `release()`,
          then drops the connection (no answer, so nothing is acknowledged).

`accepted` lists only what the server answered with a 2xx: that is what the
client may consider delivered. `received` lists every request body it read.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakePromptLayer:
    def __init__(self, api_key: str = "pl-test-key"):
        self.api_key = api_key
        self.mode = "ok"
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.accepted: list[tuple[str, dict[str, Any]]] = []
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._next_id = 1000
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakePromptLayer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def release(self) -> None:
        self._release.set()

    def set_mode(self, mode: str) -> None:
        assert mode in ("ok", "500", "hung"), mode
        self.mode = mode
        if mode == "hung":
            self._release.clear()
        else:
            self._release.set()

    # -- helpers for tests ----------------------------------------------------
    def accepted_logs(self) -> list[dict[str, Any]]:
        return [body for path, body in self.accepted if path == "/log-request"]

    def accepted_scores(self) -> list[dict[str, Any]]:
        return [body for path, body in self.accepted if path == "/library-track-score"]

    def _answer(self, path: str, method: str, body: dict[str, Any], headers) -> tuple[int, dict[str, Any]]:
        key = headers.get("X-API-KEY") or body.get("api_key")
        if key != self.api_key:
            return 401, {"success": False, "message": "Invalid API key"}
        if method == "POST" and path == "/log-request":
            with self._lock:
                self._next_id += 1
                return 201, {"id": self._next_id, "success": True}
        if method == "POST" and path in ("/library-track-metadata", "/library-track-score"):
            if "request_id" not in body:
                return 400, {"success": False, "message": "request_id is required"}
            return 200, {"success": True}
        if re.fullmatch(r"/prompt-templates/[^/]+", path):
            name = path.rsplit("/", 1)[1]
            return 200, {"id": 1, "prompt_name": name, "version": 1,
                         "prompt_template": {"type": "completion", "content": [{"type": "text", "text": "{q}"}]}}
        if method == "POST" and path == "/rest/prompt-templates":
            return 201, {"id": 1, "prompt_name": body.get("prompt_template", {}).get("prompt_name", "")}
        return 404, {"success": False, "message": f"no route {method} {path}"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else {}
                path = self.path.split("?", 1)[0]
                with fake._lock:
                    fake.received.append((path, body))
                if fake.mode == "hung":
                    fake._release.wait()
                    self.close_connection = True
                    return  # no answer at all
                if fake.mode == "500":
                    status, answer = 500, {"success": False, "message": "boom"}
                else:
                    status, answer = fake._answer(path, method, body, self.headers)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if 200 <= status < 300:
                    with fake._lock:
                        fake.accepted.append((path, body))

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

        return Handler


def closed_port_url() -> str:
    """A loopback URL where nothing listens (the server is 'down')."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
