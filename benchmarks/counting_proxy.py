"""An HTTP proxy in front of an S3 server that counts the bytes its clients read.

The job's endpoint is pointed here, so every read of the driver and of the Ray workers
(pyarrow's and botocore's) is counted, and nothing the benchmark writes to fabricate its
data is. The Host header is passed on unchanged: the SigV4 signature covers it.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate"}


class ByteCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.read_bytes = 0
        self.requests = 0

    def add(self, count: int) -> None:
        with self._lock:
            self.read_bytes += count
            self.requests += 1

    def reset(self) -> None:
        with self._lock:
            self.read_bytes = self.requests = 0


@contextmanager
def counting_proxy(upstream_url: str) -> Iterator[tuple[str, ByteCounter]]:
    """Serve a proxy to `upstream_url`; yields its URL and the counter of response bytes."""
    upstream = urlsplit(upstream_url)
    counter = ByteCounter()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as separate writes: without TCP_NODELAY, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to every request.
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:  # quiet
            pass

        def _forward(self) -> None:
            body = self._body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=300)
            try:
                connection.connect()
                connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            finally:
                connection.close()
            counter.add(len(data))
            self.send_response_only(response.status, response.reason)
            head = self.command == "HEAD"  # its Content-Length is the object's size: keep it
            for key, value in response.getheaders():
                if key.lower() not in _HOP_BY_HOP and (head or key.lower() != "content-length"):
                    self.send_header(key, value)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _body(self) -> bytes | None:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                parts = []
                while True:  # HTTP/1.1 chunked framing: hex size line, data, CRLF
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else None

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()
