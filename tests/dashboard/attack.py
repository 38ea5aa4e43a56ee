"""Local clients without the token, as a hostile local user runs them against a dashboard or control endpoint on
127.0.0.1 (issue 30), and the token holder's poll timed beside them. Run in a process of its own, so the attack
does not share the server's interpreter:

    python -m tests.dashboard.attack idle PORT --count 200 --seconds 6
    python -m tests.dashboard.attack dribble PORT --count 200 --seconds 6   # one byte every 0.5 s per connection
    python -m tests.dashboard.attack burst PORT --count 500 --threads 20    # full requests, as fast as answered

Each prints one JSON line: what it did and what it got back. Every connection a server drops is reopened (a real
attacker does not give up), within the time box.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import selectors
import socket
import threading
import time


REQUEST = b"GET /api/data?points=100 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: attack\r\n\r\n"


def hold(port: int, count: int, seconds: float, dribble: float | None) -> dict:
    """`count` connections that send nothing (`dribble` None) or one byte of a request every `dribble` seconds,
    reopened when the server drops them, for `seconds`."""
    selector = selectors.DefaultSelector()
    opened = dropped = sent = 0
    position: dict[socket.socket, int] = {}

    def open_one():
        nonlocal opened
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            return
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        position[sock] = 0
        opened += 1

    for _ in range(count):
        open_one()
    end = time.monotonic() + seconds
    next_byte = time.monotonic() + (dribble or seconds)
    while time.monotonic() < end:
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:  # dropped by the server: open another
                selector.unregister(sock)
                position.pop(sock, None)
                sock.close()
                dropped += 1
                open_one()
        if dribble is not None and time.monotonic() >= next_byte:
            next_byte += dribble
            for sock in list(position):
                index = position[sock] % (len(REQUEST) - 4)  # never the final blank line: headers never end
                try:
                    sock.send(REQUEST[index:index + 1])
                    position[sock] += 1
                    sent += 1
                except OSError:
                    pass
    for sock in list(position):
        sock.close()
    return {"mode": "dribble" if dribble else "idle", "connections": count, "opened": opened,
            "dropped_by_server": dropped, "bytes_sent": sent, "seconds": seconds}


def burst(port: int, count: int, threads: int) -> dict:
    """`count` complete requests without the token over `threads` threads; the statuses they got."""
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    left = [count]
    started = time.monotonic()

    def worker():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", "/api/data?points=100", headers={"Host": f"127.0.0.1:{port}"})
                status = connection.getresponse().status
                connection.close()
            except OSError as error:
                status = type(error).__name__
            with lock:
                statuses[str(status)] += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return {"mode": "burst", "requests": count, "threads": threads, "statuses": dict(statuses),
            "seconds": round(time.monotonic() - started, 3)}


class Poller:
    """The token holder's page: GET /api/data with the token every `interval` seconds, in a thread; each poll's
    status and answer time (a fresh connection each, as a browser opens one once a kept-alive one is dropped)."""

    def __init__(self, port: int, token: str, interval: float = 0.2, path: str = "/api/data?points=500"):
        self.port, self.token, self.interval, self.path = port, token, interval, path
        self.results: list[tuple[object, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                connection.request("GET", self.path, headers={"Host": f"127.0.0.1:{self.port}",
                                                              "Authorization": f"Bearer {self.token}"})
                response = connection.getresponse()
                response.read()
                status = response.status
                connection.close()
            except OSError as error:
                status = type(error).__name__
            self.results.append((status, time.monotonic() - started))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=15)

    def summary(self) -> dict:
        times = sorted(t for _, t in self.results)
        return {"polls": len(self.results), "ok": sum(1 for s, _ in self.results if s == 200),
                "statuses": dict(collections.Counter(str(s) for s, _ in self.results)),
                "median_s": round(times[len(times) // 2], 4) if times else None,
                "max_s": round(times[-1], 4) if times else None}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.dashboard.attack")
    parser.add_argument("mode", choices=("idle", "dribble", "burst"))
    parser.add_argument("port", type=int)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5, help="dribble: seconds between bytes")
    args = parser.parse_args(argv)
    if args.mode == "burst":
        result = burst(args.port, args.count, args.threads)
    else:
        result = hold(args.port, args.count, args.seconds, args.interval if args.mode == "dribble" else None)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
