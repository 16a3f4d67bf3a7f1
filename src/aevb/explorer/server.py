"""The explorer's HTTP server: the standard library's ThreadingHTTPServer, bounded.

It serves exactly one page (``/``, its script and its styles, read from the package) and the
JSON endpoints under ``/api/``; every other path is a 404, whatever its encoding, because a path
is looked up in a fixed table and never joined to a folder. Bad parameters are a 400 with a JSON
message, a failure inside a request a 500 with a one-line JSON message (never a traceback page).
At most ``workers`` requests are handled at once; a connection that finds them all busy waits up
to ``queue_timeout`` seconds, then gets a 503 (the listen queue holds ``request_queue_size``
connections). Bound to a loopback address, it answers only requests addressed to localhost (the
Host header), so that a web page elsewhere cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from ..errors import AevbError
from .state import MAX_GRID, MAX_STEPS, BadRequest, Explorer, parse_floats

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/explore.js": ("explore.js", "text/javascript; charset=utf-8"),
    "/static/explore.css": ("explore.css", "text/css; charset=utf-8"),
}
"""The only files served: request path -> (file in aevb/explorer/static, content type)."""
LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
"""Host header names a loopback-bound explorer answers."""
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}
JSON = "application/json"
Reply = tuple[int, str, bytes]


def _json(status: int, obj: Any) -> Reply:
    return status, JSON, json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


def _error(status: int, message: str) -> Reply:
    return _json(status, {"error": message, "status": status})


@functools.cache
def _static(name: str) -> bytes:
    return resources.files("aevb.explorer").joinpath("static", name).read_bytes()


# --------------------------------------------------------------------------- the endpoints
Params = dict[str, str]


def _get(params: Params, name: str, default: str | None = None) -> str:
    if name in params:
        return params[name]
    if default is None:
        raise BadRequest(f"missing parameter {name!r}")
    return default


def _int(params: Params, name: str, lo: int, hi: int, default: int | None = None) -> int:
    text = _get(params, name, None if default is None else str(default))
    try:
        v = int(text)
    except ValueError:
        raise BadRequest(f"{name}: expected a whole number, got {text[:40]!r}") from None
    if not lo <= v <= hi:
        raise BadRequest(f"{name}: must be from {lo} to {hi}, got {v}")
    return v


def _api_info(ex: Explorer, params: Params) -> dict:
    return ex.info()


def _api_points(ex: Explorer, params: Params) -> dict:
    return ex.points(params.get("projection"))


def _api_point(ex: Explorer, params: Params) -> dict:
    return ex.point(ex.point_index(_get(params, "i")))


def _api_decode(ex: Explorer, params: Params) -> dict:
    u = parse_floats(params["p"], "p", 2) if "p" in params else None
    z = parse_floats(params["z"], "z", ex.latent_dim) if "z" in params else None
    return ex.decode(u, z, params.get("projection"))


def _api_path(ex: Explorer, params: Params) -> dict:
    a, b = ex.point_index(_get(params, "a"), "a"), ex.point_index(_get(params, "b"), "b")
    method = _get(params, "method", "linear")
    if method not in ("linear", "spherical"):
        raise BadRequest(f"method: choose linear or spherical, got {method[:40]!r}")
    if "t" in params and "steps" in params:
        raise BadRequest("give t (fractions of the path) or steps, not both")
    if "t" in params:
        t = parse_floats(params["t"], "t")
        if not 1 <= len(t) <= MAX_STEPS or t.min() < 0 or t.max() > 1:
            raise BadRequest(f"t: 1 to {MAX_STEPS} fractions from 0 to 1")
    else:
        t = np.linspace(0.0, 1.0, _int(params, "steps", 2, MAX_STEPS, 10))
    return ex.path(a, b, method, t, params.get("projection"))


def _api_grid(ex: Explorer, params: Params) -> dict:
    n = _int(params, "n", 2, MAX_GRID)
    xs, ys = parse_floats(_get(params, "x"), "x", 2), parse_floats(_get(params, "y"), "y", 2)
    return ex.grid(n, xs, ys, params.get("projection"))


Endpoint = Callable[[Explorer, Params], dict]
API: dict[str, tuple[Endpoint, frozenset[str]]] = {
    "/api/info": (_api_info, frozenset()),
    "/api/points": (_api_points, frozenset({"projection"})),
    "/api/point": (_api_point, frozenset({"i"})),
    "/api/decode": (_api_decode, frozenset({"p", "z", "projection"})),
    "/api/path": (_api_path, frozenset({"a", "b", "method", "steps", "t", "projection"})),
    "/api/grid": (_api_grid, frozenset({"n", "x", "y", "projection"})),
}
"""The JSON endpoints: path -> (handler, the parameters it takes)."""


def _params(query: str, allowed: frozenset[str]) -> Params:
    """The query's parameters: each known and given once."""
    try:
        parsed = parse_qs(query, keep_blank_values=True, max_num_fields=len(allowed) + 1)
    except ValueError:
        raise BadRequest("too many parameters") from None
    for name, values in parsed.items():
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"unknown parameter {name[:40]!r} (this endpoint takes: {known})")
        if len(values) != 1:
            raise BadRequest(f"parameter {name!r} given {len(values)} times; give it once")
    return {k: v[0] for k, v in parsed.items()}


def respond(explorer: Explorer, target: str, host: str | None, local_only: bool) -> Reply:
    """The reply to ``GET target``: a page file, an endpoint's JSON, or a JSON error."""
    if local_only and host is not None and _host_name(host) not in LOCAL_NAMES:
        return _error(403, "this explorer answers requests addressed to localhost only")
    path, _, query = target.partition("?")
    if path in STATIC:
        name, ctype = STATIC[path]
        return 200, ctype, _static(name)
    if path not in API:
        return _error(404, "not found")
    handler, allowed = API[path]
    try:
        return _json(200, handler(explorer, _params(query, allowed)))
    except (BadRequest, AevbError) as e:
        return _error(400, str(e).splitlines()[0] if str(e) else type(e).__name__)


def _host_name(host: str) -> str:
    """The name of a Host header, without its port: 'localhost:8000' -> 'localhost'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# --------------------------------------------------------------------------- the server
class _Handler(BaseHTTPRequestHandler):
    """One connection, one request (HTTP/1.0): GET and HEAD; every other method is a 405."""

    server: ExploreServer
    protocol_version = "HTTP/1.0"
    server_version = "aevb-explore"
    sys_version = ""
    timeout = 10  # seconds a client may take to send its request: slow clients free the worker
    disable_nagle_algorithm = True  # small replies go out at once...
    wbufsize = 1 << 16  # ...in one write: head and body buffered (flushed after each request)

    def do_GET(self) -> None:
        self._reply(head=False)

    def do_HEAD(self) -> None:
        self._reply(head=True)

    def _not_allowed(self) -> None:
        self._send(*_error(405, f"method {self.command} not allowed; the explorer is read-only"))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _reply(self, head: bool) -> None:
        srv = self.server
        try:
            reply = respond(srv.explorer, self.path, self.headers.get("Host"), srv.local_only)
        except Exception as e:  # a bug or an exhausted machine: one line, never a traceback page
            srv.note(f"aevb explore: {self.path[:80]}: {type(e).__name__}: {e}")
            reply = _error(500, f"internal error ({type(e).__name__}); the server keeps running")
        self._send(*reply, head=head)

    def _send(self, status: int, ctype: str, body: bytes, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in HEADERS.items():
            self.send_header(k, v)
        if status == 405:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found while reading the request (a malformed line, a header too long): JSON."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client is gone
            self._send(*_error(code, message or "bad request"))

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log:
            sys.stderr.write(f"aevb explore: {self.address_string()} {format % args}\n")


class ExploreServer(ThreadingHTTPServer):
    """The explorer's HTTP server; ``url`` is the page's address.

    ``start()`` serves from a background thread (a notebook), ``serve_forever()`` in the caller's;
    ``stop()`` ends either and closes the socket; ``with`` starts and stops it. ``stats`` counts
    the requests served, those refused with a 503 (all workers busy), and the most handled at once.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(
        self,
        explorer: Explorer,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        workers: int = 8,
        queue_timeout: float = 2.0,
        log: bool = False,
    ) -> None:
        self.explorer = explorer
        self.log = log
        self.queue_timeout = queue_timeout
        self._slots = threading.BoundedSemaphore(workers)
        self._count = threading.Lock()
        self._busy = 0
        self.stats = {"served": 0, "refused": 0, "peak": 0, "workers": workers}
        self._thread: threading.Thread | None = None
        self._serving = False
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)
        self.local_only = ipaddress.ip_address(str(self.server_address[0])).is_loopback

    def server_bind(self) -> None:
        # HTTPServer's own looks the host's name up (socket.getfqdn), which can hang offline
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def __repr__(self) -> str:
        return f"ExploreServer({self.url!r}, run={str(self.explorer.run_dir)!r})"

    def note(self, line: str) -> None:
        """One line on stderr (a failed request)."""
        sys.stderr.write(line.splitlines()[0] + "\n" if line else "")

    # ------------------------------------------------------------------ bounded workers
    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=self.queue_timeout):
            self._refuse(request)
            return
        with self._count:
            self._busy += 1
            self.stats["peak"] = max(self.stats["peak"], self._busy)
        try:
            super().process_request(request, client_address)
        except Exception:  # no thread could be started: the slot is given back
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
            with self._count:
                self.stats["served"] += 1
        finally:
            self._release()

    def _release(self) -> None:
        with self._count:
            self._busy -= 1
        self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        """Answer 503 without a worker: read the request (so closing does not reset it)."""
        with self._count:
            self.stats["refused"] += 1
        _, _, body = _error(503, "busy: every worker is handling a request; try again")
        head = (
            "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            request.settimeout(0.5)
            request.recv(65536)
            request.sendall(head.encode() + body)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, ConnectionError | TimeoutError):  # a client that went away: silent
            self.note(f"aevb explore: request from {client_address[0]}: {err!r}")

    # ------------------------------------------------------------------ life cycle
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until :meth:`stop` (from another thread) or Ctrl-C."""
        self._serving = True
        try:
            super().serve_forever(poll_interval)
        finally:
            self._serving = False

    def start(self) -> ExploreServer:
        """Serve from a background (daemon) thread; returns at once."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self.serve_forever, name="aevb-explore", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, drain: float = 5.0) -> None:
        """Stop serving, close the socket (the page's requests then fail) and wait up to
        ``drain`` seconds for the requests being handled to finish."""
        thread = self._thread
        if self._serving or (thread is not None and thread.is_alive()):
            self.shutdown()  # returns once serve_forever has returned
        if thread is not None:
            thread.join()
        self.server_close()
        end = time.monotonic() + drain
        while self._busy and time.monotonic() < end:  # let the requests in hand finish
            time.sleep(0.01)

    def __enter__(self) -> ExploreServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
