"""The optional local HTTP endpoint of live control (stdlib `http.server`, one daemon thread, main process only).

    GET  /status              step, epoch, last metrics, state
    GET  /checkpoints         the run's checkpoints (name, reason, metrics, validity)
    GET  /requests/<id>       what became of a request: queued, accepted, saving (at a step), done, rejected
    POST /save_checkpoint     {"name": "..."} (optional): 202 with the request id
    POST /stop                save and stop after the current step: 202

Every route needs `Authorization: Bearer <token>` (the token is in RUN_DIR/control_token, mode 0600). Requests go
through the same request files as `hf-trainkit control`, so both paths behave identically. Errors are JSON with a
4xx status (any method, any path: 401 before anything else, then 404/405); nothing a client sends can reach the
training loop other than a validated request file. A client cannot wedge or flood it either: each connection has a
10 s socket timeout, at most 8 are served at once (the rest get a JSON 503), bodies are capped and their JSON
depth is limited (a body shorter than its Content-Length gets a JSON 408 once the timeout passes), and a client
that resets its connection costs nothing but a closed socket.
"""

from __future__ import annotations

import hmac
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from transformers.utils import logging

from .control import ControlError, checkpoint_table, is_queued, parse_request_json, read_response, submit_request


logger = logging.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
CONNECTION_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 8


class _Handler(BaseHTTPRequestHandler):
    server_version = "hf-trainkit-control/1"
    server: "ControlServer"
    timeout = CONNECTION_TIMEOUT_SECONDS  # a client that sends nothing (or half a request) is dropped after this

    def setup(self):
        self.timeout = self.server.connection_timeout
        super().setup()

    def __getattr__(self, name: str):
        # Any method, known or not (PATCH, OPTIONS, BREW ...): the same auth check and JSON 404/405, never
        # http.server's HTML 501 page.
        if name.startswith("do_"):
            return lambda: self._handle(name[3:])
        raise AttributeError(name)

    def send_error(self, code, message=None, explain=None):
        # http.server's own errors (bad request line, header too long, ...) as JSON, like ours.
        try:
            self.close_connection = True
            self.request_version = "HTTP/1.0"  # an unparsable request line counts as HTTP/0.9, which has no headers
            self._reply(code, {"error": message or self.responses.get(code, ("error",))[0]})
        except OSError:
            pass

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
        text = (self.headers.get("Content-Length") or "0").strip()
        if not text.isdigit():  # negative, non-numeric, several values: the body's end is unknown
            self.close_connection = True
            raise ControlError(f"Content-Length {text[:20]!r} is not a byte count")
        length = int(text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the body stays unread: this connection cannot carry another request
            raise ControlError(f"body over {MAX_BODY_BYTES} bytes", status=413)
        try:
            raw = self.rfile.read(length) if length else b""
        except (TimeoutError, socket.timeout):  # fewer bytes came than Content-Length says, then nothing more
            self.close_connection = True
            raise ControlError(f"the body is shorter than its Content-Length ({length} bytes): no more bytes came "
                               f"within {self.timeout:g} s", status=408) from None
        if len(raw) < length:
            self.close_connection = True
            raise ControlError(f"body ended after {len(raw)} of {length} bytes")
        if not raw.strip():
            return {}
        return parse_request_json(raw, "body")

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
        except (OSError, socket.timeout):
            self.close_connection = True  # the client went away or stalled: nothing to answer
        except Exception as error:  # a request must never take the training down
            self._reply(500, {"error": f"{type(error).__name__}: {error}"})

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

    def __init__(self, run_dir: str, token: str, status_provider, host: str = "127.0.0.1", port: int = 0,
                 max_connections: int = MAX_CONNECTIONS, connection_timeout: float = CONNECTION_TIMEOUT_SECONDS):
        self.connection_timeout = connection_timeout
        super().__init__((host, port), _Handler)
        self.run_dir, self.token, self.status_provider = run_dir, token, status_provider
        self.accepting = True
        self._slots = threading.BoundedSemaphore(max_connections)
        self._thread = threading.Thread(target=self.serve_forever, name="hf-trainkit-control", daemon=True)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):  # full: answer at once instead of piling up threads
            try:
                body = json.dumps({"error": "too many connections; try again"}).encode()
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Content-Length: " + str(len(body)).encode() + b"\r\nRetry-After: 1\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        # socketserver prints a traceback into the training's console; a reset or a stalled client is normal.
        import sys

        error = sys.exc_info()[1]
        if not isinstance(error, (OSError, socket.timeout)):
            logger.warning(f"Live control endpoint: a request from {client_address[0]} failed "
                           f"({type(error).__name__}: {error}); training goes on.")

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
