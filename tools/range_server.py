"""A loopback HTTP file server with Range requests and fault injection, for tests and benchmarks.

    python tools/range_server.py FOLDER [--port N]

``RangeServer(root)`` serves the files under ``root`` on 127.0.0.1 (HEAD, GET, Range), and
``drop_next = k`` makes the next k GETs send half their bytes and close the connection, as a
flaky network would; ``fail_next = k`` makes them answer ``fail_status`` (503: a busy server)
instead.  Only loopback: never a public address.
"""

from __future__ import annotations

import argparse
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["RangeServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RangeServer(ThreadingHTTPServer):
    """A file server with HTTP Range support that can drop connections mid-read on purpose."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.root = root
        self.drop_next = 0  # this many GETs send half their bytes, then close the connection
        self.fail_next = 0  # this many GETs answer fail_status
        self.fail_status = 503
        self.gets = 0  # GETs answered, failed ones (and 404s) included
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: RangeServer

    def log_message(self, *args: object) -> None:
        pass

    def _file(self) -> Path | None:
        path = (self.server.root / self.path.lstrip("/").split("?")[0]).resolve()
        if self.server.root.resolve() not in path.parents or not path.is_file():
            self.send_error(404)
            return None
        return path

    def do_HEAD(self) -> None:
        path = self._file()
        if path is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.gets += 1
            fail = self.server.fail_next > 0
            if fail:
                self.server.fail_next -= 1
        if fail:
            self.send_error(self.server.fail_status)
            return
        path = self._file()
        if path is None:
            return
        size = path.stat().st_size
        start, end = 0, size
        rng = self.headers.get("Range")
        if rng:
            a, b = rng.split("=", 1)[1].split("-")
            start, end = int(a), min(size, int(b) + 1 if b else size)
        with open(path, "rb") as f:  # only the range: shards are large
            f.seek(start)
            body = f.read(max(0, end - start))
        with self.server.lock:
            drop = self.server.drop_next > 0
            if drop:
                self.server.drop_next -= 1
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if drop:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    args = ap.parse_args()
    srv = RangeServer(Path(args.folder))
    print(f"serving {args.folder} at {srv.url}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
