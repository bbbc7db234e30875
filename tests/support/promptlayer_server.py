"""A local stand-in for the PromptLayer API that honours the SDK's wire contract.

stdlib only, 127.0.0.1 on an ephemeral port. Modes, switchable while running:
- "ok":   answers like PromptLayer (`POST /log-request` -> 201 {"id": N}, ...)
- "500":  every request -> 500 {"message": "boom"}
- "hung": the handler holds the request without answering until `release()`,
          then drops the connection (no answer, so nothing is acknowledged).

`accepted` lists only what the server answered with a 2xx: that is what the
client may consider delivered. `received` lists every request body it read.

Besides requests and scores it keeps a prompt registry (`POST /rest/prompt-templates`
publishes a version, numbered 1, 2, ... per name; `POST /prompt-templates/{name}` finds
one by `version`, by `metadata_filters` or the latest, else 404) and groups
(`POST /create-group` -> {"id"}, `POST /track-group` needs a known request and group).
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
        self.templates: dict[str, list[dict[str, Any]]] = {}  # name -> versions, oldest first
        self.requests: dict[int, dict[str, Any]] = {}  # request id -> log-request body
        self.groups: dict[int, list[int]] = {}  # group id -> request ids
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

    def template_text(self, name: str, version: int) -> str | None:
        for found in self.templates.get(name, []):
            if found["version"] == version:
                return found["prompt_template"]["content"][0]["text"]
        return None

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _find_template(self, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        versions = self.templates.get(name, [])
        if body.get("version") is not None:
            versions = [v for v in versions if v["version"] == int(body["version"])]
        for key, value in (body.get("metadata_filters") or {}).items():
            versions = [v for v in versions if (v.get("metadata") or {}).get(key) == value]
        return versions[-1] if versions else None

    def _answer(self, path: str, method: str, body: dict[str, Any], headers) -> tuple[int, dict[str, Any]]:
        key = headers.get("X-API-KEY") or body.get("api_key")
        if key != self.api_key:
            return 401, {"success": False, "message": "Invalid API key"}
        if method == "POST" and path == "/log-request":
            with self._lock:
                request_id = self._new_id()
                self.requests[request_id] = body
                return 201, {"id": request_id, "success": True}
        if method == "POST" and path in ("/library-track-metadata", "/library-track-score"):
            if "request_id" not in body:
                return 400, {"success": False, "message": "request_id is required"}
            return 200, {"success": True}
        if method == "POST" and path == "/create-group":
            with self._lock:
                group_id = self._new_id()
                self.groups[group_id] = []
            return 200, {"success": True, "id": group_id}
        if method == "POST" and path == "/track-group":
            with self._lock:
                if body.get("group_id") not in self.groups or body.get("request_id") not in self.requests:
                    return 400, {"success": False, "message": "unknown request_id or group_id"}
                self.groups[body["group_id"]].append(body["request_id"])
            return 200, {"success": True}
        if method == "POST" and path == "/rest/prompt-templates":
            template, version = body.get("prompt_template") or {}, body.get("prompt_version") or {}
            name = template.get("prompt_name")
            if not name or "prompt_template" not in version:
                return 400, {"success": False, "message": "prompt_name and prompt_template are required"}
            with self._lock:
                versions = self.templates.setdefault(name, [])
                stored = {
                    "id": len(self.templates), "prompt_name": name, "version": len(versions) + 1,
                    "prompt_template": version["prompt_template"], "metadata": version.get("metadata") or {},
                    "commit_message": version.get("commit_message", ""), "tags": template.get("tags", []),
                    "release_labels": body.get("release_labels") or [],
                }
                versions.append(stored)
            return 201, {**stored, "version_number": stored["version"]}
        if method == "POST" and re.fullmatch(r"/prompt-templates/[^/]+", path):
            from urllib.parse import unquote

            found = self._find_template(unquote(path.rsplit("/", 1)[1]), body)
            if found is None:
                return 404, {"success": False, "message": "prompt template not found"}
            return 200, {**found, "llm_kwargs": None}
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
                # Record before answering: the client returns as soon as it reads the answer, and a
                # test that looks at `accepted` then must find it there (appending after the write
                # raced the test's assertion and failed CI once).
                if 200 <= status < 300:
                    with fake._lock:
                        fake.accepted.append((path, body))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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
