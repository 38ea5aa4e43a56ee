"""The optional local HTTP endpoint of live control (stdlib `http.server`, one daemon thread, main process only).

    GET  /status              step, epoch, last metrics, state
    GET  /checkpoints         the run's checkpoints (name, reason, metrics, validity)
    GET  /requests/<id>       what became of a request: queued, accepted, saving (at a step), done, rejected
    POST /save_checkpoint     {"name": "..."} (optional): 202 with the request id
    POST /stop                save and stop after the current step: 202

Every route needs `Authorization: Bearer <token>` (the token is in RUN_DIR/control_token, mode 0600). Requests go
through the same request files as `hf-trainkit control`, so both paths behave identically. Errors are JSON with a
4xx status; nothing a client sends can reach the training loop other than a validated request file.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .control import ControlError, checkpoint_table, is_queued, read_response, submit_request


MAX_BODY_BYTES = 64 * 1024


class _Handler(BaseHTTPRequestHandler):
    server_version = "hf-trainkit-control/1"
    server: "ControlServer"

    def log_message(self, format, *args):  # no per-request lines in the training's console
        pass

    def _reply(self, status: int, payload: dict, headers: dict | None = None):
        body = json.dumps(payload, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.server.token.encode()):
            return True
        self._reply(401, {"error": "missing or wrong bearer token (see RUN_DIR/control_token)"},
                    {"WWW-Authenticate": 'Bearer realm="hf-trainkit"'})
        return False

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ControlError(f"body over {MAX_BODY_BYTES} bytes", status=413)
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise ControlError("body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ControlError("body must be a JSON object")
        return body

    def _handle(self, method: str):
        try:
            if not self._authorized():
                return
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            routes = {("GET", "/status"): self._status, ("GET", "/checkpoints"): self._checkpoints,
                      ("POST", "/save_checkpoint"): self._save, ("POST", "/stop"): self._stop}
            handler = routes.get((method, path))
            match = re.fullmatch(r"/requests/([0-9a-f]{1,32})", path)
            if handler is not None:
                handler()
            elif method == "GET" and match:
                self._request(match.group(1))
            elif any(p == path for _, p in routes):
                self._reply(405, {"error": f"{method} not allowed on {path}"})
            else:
                self._reply(404, {"error": f"no route {path}"})
        except ControlError as error:
            self._reply(error.status, {"error": str(error)})
        except Exception as error:  # a request must never take the training down
            self._reply(500, {"error": f"{type(error).__name__}: {error}"})

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def _status(self):
        self._reply(200, self.server.status_provider())

    def _checkpoints(self):
        self._reply(200, {"checkpoints": checkpoint_table(self.server.run_dir)})

    def _submit(self, action: str, name: str | None):
        if not self.server.accepting:
            raise ControlError("training has ended: no request is accepted", status=409)
        request_id = submit_request(self.server.run_dir, action, name, source="http")
        self._reply(202, {"id": request_id, "status": "queued", "action": action, "name": name,
                          "applied": "at the next step boundary"})

    def _save(self):
        name = self._body().get("name")
        if name is not None and not isinstance(name, str):
            raise ControlError("'name' must be a string")
        self._submit("save", name)

    def _stop(self):
        self._body()
        self._submit("stop", None)

    def _request(self, request_id: str):
        response = read_response(self.server.run_dir, request_id)
        if response is not None:
            self._reply(200, response)
        elif is_queued(self.server.run_dir, request_id):
            self._reply(200, {"id": request_id, "status": "queued"})
        else:
            self._reply(404, {"error": f"no request {request_id}"})


class ControlServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, run_dir: str, token: str, status_provider, host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), _Handler)
        self.run_dir, self.token, self.status_provider = run_dir, token, status_provider
        self.accepting = True
        self._thread = threading.Thread(target=self.serve_forever, name="hf-trainkit-control", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "ControlServer":
        self._thread.start()
        return self

    def stop(self):
        self.accepting = False
        self.shutdown()
        self.server_close()
