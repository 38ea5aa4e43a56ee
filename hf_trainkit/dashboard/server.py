"""The dashboard's HTTP server: the control endpoint's server (stdlib `ThreadingHTTPServer`, connection cap, socket
timeouts, body limits, JSON errors) with the dashboard's routes.

    GET  /                        the page (no data in it); GET /static/<file>: its script, style, uPlot
    GET  /api/runs                labels and folders
    GET  /api/data?c=G:N,G:N&points=P   per run: only the points after the client's cursor (or, for a new client,
                                  every series thinned to P points), the state, the current-metrics line; a run
                                  still being read a first time: `"loading": true`, its `loaded_fraction`, no
                                  series (its cursor null: the next poll is a new client's)
    GET  /api/details?run=I       checkpoints, diagnosis, the live callbacks' findings, report link
    GET  /api/requests?run=I&id=X what became of a save/stop request
    GET  /api/report?run=I&token=T  the run's report.html (written by `hf-trainkit monitor`)
    POST /api/save?run=I {"name": ...}, POST /api/stop?run=I   queue a live-control request (as
                                  `hf-trainkit control save|stop` does): 202 with its id

Safe by default: bound to 127.0.0.1; every /api route needs the token in `Authorization: Bearer T` (`?token=T` is
taken only by GET /api/report, the one link that needs it, never by another route or a POST); the Host header (or
an absolute-form request target) must name this server (no DNS rebinding) and an Origin, when sent, must be this
server's (no cross-site request); actions are POST only, refused on a run that is not running or on a read-only
page, and answered 409 with why when the training would not carry them out (after a Stop, a save already queued).
Every number in a query is ASCII digits of bounded length, else a JSON 400. Errors are JSON `{"error": ...}`, never
a traceback. Slow, idle and flooding clients are dealt with by the control server (a header deadline per request,
the oldest connection without the token shed first), so a token holder's poll is answered while they go on.

The server answers as soon as it listens: the runs are read in a background thread, newest first, each run's long
log in parts; a request waits at most `LOADING_WAIT_SECONDS` (in all) for runs still being read, then says which
are loading.
"""

from __future__ import annotations

import hmac
import mimetypes
import os
import secrets
import threading
import time
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..control import (ControlError, is_queued, read_response, read_token, settle_queue,
                                     submit_request, why_not_accepted, write_token)
from ..control.server import NUMBER, ControlServer, _Handler
from . import data
from .runs import RunData


TOKEN_FILE = "dashboard_token"
STATIC_FILES = {"index.html", "dashboard.js", "dashboard.css", "uPlot.iife.min.js", "uPlot.min.css",
                "uPlot.LICENSE"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
}
MAX_POINTS = 5000
LOADING_WAIT_SECONDS = 1.0  # a request waits this long (in all) for runs still being read, then says "loading"


class _DashboardHandler(_Handler):
    server_version = "hf-trainkit-dashboard/1"
    server: "DashboardServer"

    def _reply(self, status: int, payload: dict, headers: dict | None = None):
        super()._reply(status, payload, {**SECURITY_HEADERS, **(headers or {})})

    def _send_bytes(self, body: bytes, content_type: str):
        self._send(200, body, content_type, SECURITY_HEADERS)

    # --- checks --------------------------------------------------------------------------------------------------

    def _host_allowed(self, target_host: str | None) -> bool:
        # DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends `Host: evil.example`.
        # The port is not checked, so an SSH tunnel from another local port (ssh -L 9000:127.0.0.1:6150) works.
        # An absolute-form target (`GET http://other.example/ HTTP/1.1`) names the host instead of the header.
        host = (target_host if target_host is not None else self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in self.server.allowed_names:
            self._reply(403, {"error": f"Host {host[:100]!r} is not this server (open {self.server.base_url})"})
            return False
        # Cross-site requests: a browser names the page that sends one; only this server's own page may.
        origin = self.headers.get("Origin")
        if origin is not None and origin.strip().lower() != f"http://{host}":
            self._reply(403, {"error": f"cross-origin request from {origin[:100]!r} refused"})
            return False
        return True

    def _token_ok(self, query: dict, link: bool) -> bool:
        """The token of `Authorization: Bearer T` (the scheme in any case, RFC 9110 11.1), or of `?token=T` where
        `link` (GET /api/report, opened as a link: no header can be set)."""
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        in_query = (query.get("token") or [""])[0]
        token = given.strip() if scheme.lower() == "bearer" else (in_query if link else "")
        if token and hmac.compare_digest(token.encode(), self.server.token.encode()):
            self._authenticated()
            return True
        if in_query and not link:
            message = ("the token goes in the Authorization header (Authorization: Bearer T), not in the URL: "
                       "?token= is taken only by the report link (it ends up in browser history and logs)")
        else:
            message = ("missing or wrong token: open the URL the dashboard printed (with ?token=...), or paste the "
                       "token from RUN/dashboard_token")
        self._reply(401, {"error": message}, {"WWW-Authenticate": 'Bearer realm="hf-trainkit-dashboard"'})
        return False

    def _run(self, query: dict) -> RunData:
        text = (query.get("run") or ["0"])[0]
        if not NUMBER.fullmatch(text) or int(text) >= len(self.server.runs):
            raise ControlError(f"no run {text[:20]!r} (0-{len(self.server.runs) - 1})", status=404)
        return self.server.runs[int(text)]

    @staticmethod
    def _points(query: dict) -> int:
        text = (query.get("points") or [str(data.DEFAULT_POINTS)])[0]
        if not NUMBER.fullmatch(text):
            raise ControlError(f"points={text[:20]!r} is not a number of points (ASCII digits, at most 12)")
        return min(max(int(text), 10), MAX_POINTS)

    # --- routing -------------------------------------------------------------------------------------------------

    def _handle(self, method: str):
        try:
            parts = urlsplit(self.path)
            absolute = self.path[:1] != "/"
            if absolute and not (parts.scheme in ("http", "https") and parts.netloc):
                self.close_connection = True
                self._reply(400, {"error": f"request target {self.path[:100]!r} is neither a path nor an http URL"})
                return
            if not self._host_allowed(parts.netloc if absolute else None):
                return
            try:
                path, query = (parts.path.rstrip("/") or "/"), parse_qs(parts.query, max_num_fields=20)
            except ValueError:
                raise ControlError("too many query fields (at most 20)") from None
            route_method = "GET" if method == "HEAD" else method  # HEAD: GET's headers, no body
            if path == "/favicon.ico" and method == "GET":  # asked for by every page, the report's too
                self.send_response(204)
                for key, value in SECURITY_HEADERS.items():
                    self.send_header(key, value)
                self.end_headers()
                return
            if path in ("/", "/index.html") or path.startswith("/static/"):
                if route_method != "GET":
                    self._reply(405, {"error": f"{method} not allowed on {path}"})
                    return
                self._static("index.html" if path in ("/", "/index.html") else path[len("/static/"):])
                return
            if not path.startswith("/api/"):
                self._reply(404, {"error": f"no route {path[:100]}"})
                return
            if not self._token_ok(query, link=(route_method, path) == ("GET", "/api/report")):
                return
            routes = {("GET", "/api/runs"): self._runs, ("GET", "/api/data"): self._data,
                      ("GET", "/api/details"): self._details, ("GET", "/api/requests"): self._request,
                      ("GET", "/api/report"): self._report, ("GET", "/api/window"): self._window,
                      ("POST", "/api/save"): self._save, ("POST", "/api/stop"): self._stop}
            handler = routes.get((route_method, path))
            if handler is not None:
                handler(query)
            elif any(p == path for _, p in routes):
                self._reply(405, {"error": f"{method} not allowed on {path}"}, {"Allow": next(
                    m for m, p in routes if p == path)})
            else:
                self._reply(404, {"error": f"no route {path[:100]}"})
        except ControlError as error:
            self._reply(error.status, {"error": str(error)})
        except (OSError, TimeoutError):
            self.close_connection = True
        except Exception as error:  # a request must never take the server (or a training beside it) down
            import traceback

            traceback.print_exc()  # into the dashboard's console (logs/dashboard.log), not to the client
            self._reply(500, {"error": f"internal error ({type(error).__name__}); the dashboard's console has the "
                                       "details"})

    def _static(self, name: str):
        if name not in STATIC_FILES:
            raise ControlError(f"no file {name[:100]!r}", status=404)
        body = resources.files("hf_trainkit.dashboard").joinpath("static", name).read_bytes()
        kind = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}.get(
            Path(name).suffix, mimetypes.guess_type(name)[0] or "text/plain")
        self._send_bytes(body, f"{kind}; charset=utf-8")

    def _runs(self, query):
        self._reply(200, {"runs": [{"id": i, "label": r.label, "path": str(r.path)}
                                   for i, r in enumerate(self.server.runs)], "read_only": self.server.read_only})

    def _data(self, query):
        points = self._points(query)
        cursors = (query.get("c") or [""])[0].split(",")
        parsed = []
        for text in cursors[:len(self.server.runs)]:
            g, colon, c = text.partition(":")
            if text and not (colon and NUMBER.fullmatch(g) and NUMBER.fullmatch(c)):
                raise ControlError(f"cursor {text[:30]!r} is not GENERATION:COUNT (ASCII digits, at most 12 each)")
            parsed.append((int(g), int(c)) if text else (None, None))
        out = []
        deadline = time.monotonic() + LOADING_WAIT_SECONDS
        for index, run in enumerate(self.server.runs):
            generation, cursor = parsed[index] if index < len(parsed) else (None, None)
            loaded = _loaded(run, deadline)
            if loaded:
                run.refresh()
            state = run.state(self.server.read_only)
            if state["state"] != "running":
                settle_queue(run.path)  # what the training left queued (it died, or ended first) is answered
            elif state["can_act"]:
                refusal = why_not_accepted(run.path, "stop", None)  # a stop under way, a full queue: every tab
                if refusal is not None:                           # shows the buttons off, and why
                    state = {**state, "can_act": False, "why_not": str(refusal)}
            if loaded:
                out.append({"id": index, "label": run.label, **run.since(cursor, generation, points), "state": state,
                            "line": run.line(state["max_steps"]), "loading": False})
            else:  # still being read a first time: what the page needs to say so (and no series yet)
                out.append({"id": index, "label": run.label, "generation": run.generation, "cursor": None,
                            "reset": False, "series": {}, "state": state, "line": None, "loading": True,
                            "loaded_fraction": round(run.loaded_fraction, 3)})
        self._reply(200, {"runs": out})

    def _window(self, query):
        """GET /api/window?run=I&keys=K1,K2&axis=x|e|t&from=A&to=B&points=P: a zoomed plot's points in detail."""
        run = self._run(query)
        try:
            low, high = float((query.get("from") or [""])[0]), float((query.get("to") or [""])[0])
        except ValueError:
            raise ControlError("'from' and 'to' must be numbers") from None
        axis = (query.get("axis") or ["x"])[0]
        if axis not in data.AXES:
            raise ControlError(f"axis {axis[:10]!r} is not one of {', '.join(data.AXES)}")
        points = self._points(query)
        keys = [k for k in (query.get("keys") or [""])[0].split(",") if k][:50]
        loaded = _loaded(run, time.monotonic() + LOADING_WAIT_SECONDS)
        self._reply(200, {"id": self.server.runs.index(run), "loading": not loaded,
                          "series": run.window(keys, axis, low, high, points) if loaded else {}})

    def _details(self, query):
        run = self._run(query)
        loaded = _loaded(run, time.monotonic() + LOADING_WAIT_SECONDS)
        self._reply(200, {"id": self.server.runs.index(run), "checkpoints": run.checkpoints(),
                          "diagnosis": run.diagnosis() if loaded else None, "findings": run.findings()[-50:],
                          "report": run.report() is not None, "loading": not loaded})

    def _report(self, query):
        report = self._run(query).report()
        if report is None:
            raise ControlError("no report.html yet: run `hf-trainkit monitor RUN --output-dir RUN/plots`", status=404)
        self._send_bytes(report.read_bytes(), "text/html; charset=utf-8")

    def _request(self, query):
        run = self._run(query)
        request_id = (query.get("id") or [""])[0]
        if is_queued(run.path, request_id):
            settle_queue(run.path)  # queued for a training that has ended or died: answered rejected, with why
        response = read_response(run.path, request_id)
        if response is not None:
            self._reply(200, response)
        elif is_queued(run.path, request_id):
            self._reply(200, {"id": request_id, "status": "queued"})
        else:
            self._reply(404, {"error": f"no request {request_id[:64]!r}"})

    def _act(self, query, action: str, name: str | None):
        run = self._run(query)
        state = run.state(self.server.read_only)
        if not state["can_act"]:
            raise ControlError(f"cannot {action}: {state['why_not']}", status=409)
        try:
            request_id = submit_request(run.path, action, name, source="dashboard")
        except ControlError as error:
            if error.status == 400:
                raise
            raise ControlError(f"cannot {action}: {error}", status=error.status) from None
        self._reply(202, {"id": request_id, "status": "queued", "action": action, "name": name})

    def _save(self, query):
        name = self._body().get("name")
        if name in ("", None):
            name = None
        elif not isinstance(name, str):
            raise ControlError("'name' must be a string")
        self._act(query, "save", name)

    def _stop(self, query):
        self._body()
        self._act(query, "stop", None)


def _loaded(run: RunData, deadline: float) -> bool:
    """Whether `run` has been read a first time, waiting for it until `deadline` (`time.monotonic()`)."""
    return run.loaded.wait(max(0.0, deadline - time.monotonic()))


class DashboardServer(ControlServer):
    """One page for one run or several (`runs`: (path, label) pairs), on `host:port` (0 picks a free port).

    Args:
        runs (`list[tuple[str, str]]`): output dirs and their labels.
        token (`str`, *optional*): the page's token; default the one already in `token_file` (so a second dashboard
            of the run, or a restarted one, opens with the same file), else a fresh one.
        host (`str`, *optional*, defaults to `"127.0.0.1"`), port (`int`, *optional*, defaults to `0`).
        read_only (`bool`, *optional*, defaults to `False`): no Save or Stop.
        token_file (`str`, *optional*): where the token is written (mode 0600); default RUN/dashboard_token of the
            first run, skipped (with the token only printed) if that folder cannot be written.
        listening_socket (`socket.socket`, *optional*): a socket already bound and listening, served instead of
            binding `host:port` (the background dashboard's parent opens it, so its URL connects at once).
    """

    def __init__(self, runs, token: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 read_only: bool = False, token_file: str | os.PathLike | None = None, listening_socket=None):
        runs = [RunData(path, label) for path, label in runs]
        token_file = Path(token_file) if token_file else runs[0].path / TOKEN_FILE
        token = token or read_token(token_file.parent, token_file.name) or secrets.token_urlsafe(32)
        super().__init__(str(runs[0].path), token, dict, host, port, listening_socket=listening_socket)
        self.RequestHandlerClass = _DashboardHandler
        self.runs, self.read_only = runs, read_only
        self.daemon_threads = True
        host = self.server_address[0]
        loopback = {"127.0.0.1", "localhost", "[::1]"}
        self.allowed_names = loopback | {f"[{host}]" if ":" in host else host.lower()}
        self.token_file = token_file
        try:
            write_token(self.token_file.parent, name=self.token_file.name, token=token)
        except OSError:
            self.token_file = "(not written: the run folder is read-only)"
        # The runs are read after `start()`, in the background (the page answers at once, and says "loading").
        self._cancel_loading = threading.Event()
        self._loader = threading.Thread(target=self._load_runs, name="hf-trainkit-dashboard-load", daemon=True)

    def _load_runs(self):
        for run in sorted(self.runs, key=RunData.newest, reverse=True):  # newest first (sorted is stable)
            if self._cancel_loading.is_set():
                break
            try:
                run.load(self._cancel_loading)
            except Exception:  # an unreadable run must not keep the others from loading; each poll retries it
                import traceback

                traceback.print_exc()

    def start(self) -> "DashboardServer":
        super().start()
        self._loader.start()
        return self

    def stop(self):
        self._cancel_loading.set()
        super().stop()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Wait until every run has been read a first time (or `timeout` seconds); whether they all have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return all(run.loaded.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                   for run in self.runs)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def url(self) -> str:
        """The ready URL, token included (as Jupyter prints it)."""
        return f"{self.base_url}/?token={self.token}"
