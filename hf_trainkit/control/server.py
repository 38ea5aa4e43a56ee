"""The optional local HTTP endpoint of live control (stdlib `http.server`, one daemon thread, main process only).

    GET  /status              step, epoch, last metrics, state
    GET  /checkpoints         the run's checkpoints (name, reason, metrics, validity)
    GET  /requests/<id>       what became of a request: queued, accepted, saving (at a step), done, rejected
    POST /save_checkpoint     {"name": "..."} (optional): 202 with the request id
    POST /stop                save and stop after the current step: 202

Every route needs `Authorization: Bearer <token>` (the token is in RUN_DIR/control_token, mode 0600). Requests go
through the same request files as `hf-trainkit control`, so both paths behave identically. Errors are JSON with a
4xx status (any method, any path: 401 before anything else, then 404/405); nothing a client sends can reach the
training loop other than a validated request file.

A local user without the token cannot lock it: the whole request line and headers must arrive within
HEADER_SECONDS (a deadline per request, not per byte: a client dribbling a byte a second is dropped all the same),
up to MAX_CONNECTIONS are served at once, and a connection beyond that sheds the oldest one still waiting for its
headers (never one that showed the token, until those are gone), so a token holder's request gets through 200 idle
or dribbling connections. A body has a 10 s socket timeout, is capped (64 KiB) and needs a Content-Length (no
chunked bodies: 411), its JSON depth is limited; a client that resets its connection costs nothing but a closed
socket.
"""

from __future__ import annotations

import hmac
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from transformers.utils import logging

from ..checkpointing.discover import checkpoint_table
from .files import ControlError, parse_request_json
from .requests import is_queued, read_response, submit_request


logger = logging.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
CONNECTION_TIMEOUT_SECONDS = 10.0  # per socket read of a body
HEADER_SECONDS = 5.0  # for the whole request line and headers of each request (a kept-alive one too)
MAX_CONNECTIONS = 256  # served at once (a thread each, mostly blocked); one more sheds the oldest waiting for headers
LISTEN_BACKLOG = 512  # a burst waits in the kernel's queue instead of being refused
NUMBER = re.compile(r"[0-9]{1,12}")  # ASCII digits only ('²'.isdigit() is True), short of int()'s length limit


class _Handler(BaseHTTPRequestHandler):
    server_version = "hf-trainkit-control/1"
    server: "ControlServer"
    timeout = CONNECTION_TIMEOUT_SECONDS  # a client that sends nothing (or half a request) is dropped after this

    def setup(self):
        self.timeout = self.server.connection_timeout
        super().setup()

    def handle_one_request(self):
        self._body_pending = False
        self.server._waiting_for_headers(self.request)  # the header deadline starts now
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.command, self.requestline = None, self.raw_requestline.decode("iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) == 3 and not re.fullmatch(r"HTTP/1\.[01]", words[2]) and words[2].startswith("HTTP/"):
            self.request_version, self.close_connection = "HTTP/1.0", True
            self.send_error(505, f"{words[2][:20]} is not supported: send HTTP/1.1")
            return False
        if len(words) == 2 and words[0] == "GET":  # HTTP/0.9: http.server would wait for headers that never come
            self.request_version, self.close_connection = "HTTP/1.0", True
            self.send_error(400, "an HTTP/0.9 request line (no version) is not supported: send HTTP/1.1")
            return False
        ok = super().parse_request()
        if ok:
            self.server._busy(self.request)
            length = (self.headers.get("Content-Length") or "").strip()
            self._body_pending = bool(self.headers.get("Transfer-Encoding")) or (length not in ("", "0"))
        return ok

    def _authenticated(self):
        """The token was shown: this connection is shed only after every one that has not."""
        self.server._authenticated(self.request)

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
        self._send(status, json.dumps(payload, default=str).encode(), "application/json", headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None):
        if getattr(self, "_body_pending", False):
            self.close_connection = True  # an unread body would be taken for the next request
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":  # the headers a GET would get, without the body
            self.wfile.write(body)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        # The scheme is case-insensitive (RFC 9110 11.1): `bearer` is `Bearer`; the token itself is compared exactly.
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.server.token.encode()):
            self._authenticated()
            return True
        self._reply(401, {"error": "missing or wrong bearer token (see RUN_DIR/control_token)"},
                    {"WWW-Authenticate": 'Bearer realm="hf-trainkit"'})
        return False

    def _body(self) -> dict:
        if self.headers.get("Transfer-Encoding"):  # chunked: its end is not where Content-Length says
            self.close_connection = True
            raise ControlError("chunked bodies are not supported: send the body with a Content-Length", status=411)
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self.close_connection = True
            raise ControlError("a POST needs a Content-Length (0 for no body; curl -d '{}' sends one)", status=411)
        text = values[0].strip()
        if len(values) > 1 or not NUMBER.fullmatch(text):  # negative, non-numeric, several values: its end is unknown
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
        self._body_pending = False
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
            logger.warning(f"Live control endpoint: {self.command} {self.path[:100]} failed ({type(error).__name__}: "
                           f"{error}); training goes on.")
            self._reply(500, {"error": f"internal error ({type(error).__name__}); the training goes on"})

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


class _Connection:
    __slots__ = ("sock", "opened", "deadline", "authenticated", "requests")

    def __init__(self, sock, deadline: float):
        self.sock, self.opened, self.deadline, self.authenticated = sock, time.monotonic(), deadline, False
        self.requests = 0  # begun on it: past the first, an idle kept-alive connection is closed without a 408


class ControlServer(ThreadingHTTPServer):
    """The live-control endpoint (and, with other routes, the dashboard's server), started with `start()`.

    Args:
        run_dir (`str`): the run whose request files it writes. token (`str`): the bearer token.
        status_provider (`Callable[[], dict]`): what `GET /status` answers.
        host (`str`, *optional*, defaults to `"127.0.0.1"`), port (`int`, *optional*, defaults to `0`: a free one).
        max_connections (`int`, *optional*, defaults to 256): served at once; one more sheds the oldest connection
            still waiting for its headers (those that never showed the token first), or gets a JSON 503 if none is.
        connection_timeout (`float`, *optional*, defaults to 10): per socket read of a body.
        header_seconds (`float`, *optional*, defaults to 5): for the request line and all headers of each request.
        listening_socket (`socket.socket`, *optional*): a socket already bound and listening, served as is.
    """

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, run_dir: str, token: str, status_provider, host: str = "127.0.0.1", port: int = 0,
                 max_connections: int = MAX_CONNECTIONS, connection_timeout: float = CONNECTION_TIMEOUT_SECONDS,
                 header_seconds: float = HEADER_SECONDS, listening_socket: socket.socket | None = None):
        self.connection_timeout, self.header_seconds = connection_timeout, header_seconds
        if listening_socket is None:
            super().__init__((host, port), _Handler)
        else:  # already bound and listening (the parent of a background dashboard opened it): connect at once
            super().__init__(listening_socket.getsockname()[:2], _Handler, bind_and_activate=False)
            self.socket.close()
            self.socket = listening_socket
            self.server_address = listening_socket.getsockname()
        self.run_dir, self.token, self.status_provider = run_dir, token, status_provider
        self.accepting = True
        self.max_connections = max_connections
        self._connections: dict[int, _Connection] = {}  # id(socket) -> its state; `_lock` guards it
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, name="hf-trainkit-control", daemon=True)
        self._reaper = threading.Thread(target=self._reap, name="hf-trainkit-control-deadlines", daemon=True)

    # --- connections: a header deadline each, the oldest unauthenticated shed first ----------------------------------

    def _waiting_for_headers(self, sock):
        with self._lock:
            connection = self._connections.get(id(sock))
            if connection is not None:
                connection.deadline = time.monotonic() + self.header_seconds
                connection.requests += 1

    def _busy(self, sock):
        with self._lock:
            connection = self._connections.get(id(sock))
            if connection is not None:
                connection.deadline = None

    def _authenticated(self, sock):
        with self._lock:
            connection = self._connections.get(id(sock))
            if connection is not None:
                connection.authenticated = True

    def _drop(self, connection: _Connection, why: bytes | None):
        """End a connection from outside its thread: its blocked read returns and the thread ends."""
        if why is not None:
            try:  # best effort, never blocking: a client that reads nothing gets nothing
                connection.sock.send(why, getattr(socket, "MSG_DONTWAIT", 0))
            except OSError:
                pass
        try:
            connection.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _reap(self):
        timeout = _json_response(408, f"the request line and headers did not arrive within "
                                      f"{self.header_seconds:g} s")
        while not self._closed.wait(0.25):
            now = time.monotonic()
            with self._lock:
                late = [c for c in self._connections.values() if c.deadline is not None and c.deadline < now]
                for connection in late:
                    self._connections.pop(id(connection.sock), None)
            for connection in late:
                self._drop(connection, timeout if connection.requests <= 1 else None)

    def process_request(self, request, client_address):
        with self._lock:
            victim = None
            if len(self._connections) >= self.max_connections:
                waiting = [c for c in self._connections.values() if c.deadline is not None]
                if waiting:  # never a request being answered; token holders' kept-alive connections last
                    victim = min(waiting, key=lambda c: (c.authenticated, c.opened))
                    self._connections.pop(id(victim.sock))
            full = len(self._connections) >= self.max_connections
            if not full:
                self._connections[id(request)] = _Connection(request, time.monotonic() + self.header_seconds)
        if victim is not None:
            self._drop(victim, _json_response(503, "shed: the server is full; this connection was the oldest "
                                                   "one still waiting for its headers"))
        if full:  # every slot answers a request right now: say so at once instead of piling up threads
            try:
                request.sendall(_json_response(503, "too many connections; try again"))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._connections.pop(id(request), None)

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
        self._reaper.start()
        return self

    def stop(self):
        self.accepting = False
        self._closed.set()
        self.shutdown()
        self.server_close()


def _json_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.0 JSON error response (for a connection no handler answers)."""
    from http import HTTPStatus

    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.0 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n").encode() + body
