"""A small Hugging Face Hub-compatible file server on 127.0.0.1, for tests.

It answers what ``huggingface_hub.hf_hub_download`` asks: HEAD/GET on
``/{repo_id}/resolve/{revision}/{filename}`` with ``X-Repo-Commit``, ``ETag`` and
``Content-Length`` (and byte ranges), plus ``/raw/{name}`` for plain-HTTPS files such as the UFD
head. It counts requests, and can misbehave on purpose: slow, HTTP 500, or a dropped connection
half-way through a file.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class HubServer:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str]] = []
        self.fault: str | None = None  # None, "slow", "error", "drop"
        self.slow_seconds = 30.0
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, repo_id: str, files: dict[str, Path]) -> str:
        """Publish ``files`` (name -> local path) as ``repo_id``; returns the commit hash."""
        folder = self.root / "repos" / repo_id
        folder.mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            shutil.copyfile(path, folder / name)
        return self.commit(repo_id)

    def add_raw(self, name: str, path: Path) -> str:
        """Serve ``path`` at ``/raw/{name}``; returns its URL."""
        folder = self.root / "raw"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / name)
        return f"{self.url}/raw/{name}"

    def commit(self, repo_id: str) -> str:
        """A stable 40-hex "commit" for the repo's current content."""
        digest = hashlib.sha1(repo_id.encode())
        for f in sorted((self.root / "repos" / repo_id).iterdir()):
            digest.update(f.name.encode() + _etag(f).encode())
        return digest.hexdigest()

    def file_for(self, path: str) -> tuple[Path | None, str | None]:
        parts = unquote(path.split("?")[0]).strip("/").split("/")
        if parts[0] == "raw" and len(parts) == 2:
            return self.root / "raw" / parts[1], None
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            repo = self.root / "repos" / repo_id
            if revision not in ("main", self.commit(repo_id) if repo.is_dir() else ""):
                return None, None
            return repo / name, self.commit(repo_id) if repo.is_dir() else None
        return None, None


def _etag(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _handler_for(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            hub.requests.append((self.command, self.path))
            if hub.fault == "slow":
                time.sleep(hub.slow_seconds)
            if hub.fault == "error":
                return self._status(500, b"internal error")
            path, commit = hub.file_for(self.path)
            if path is None or not path.is_file():
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            start, end = 0, len(data)
            status = 200
            ranged = self.headers.get("Range")
            if ranged and ranged.startswith("bytes="):
                first, _, last = ranged[6:].partition("-")
                start, end = int(first or 0), int(last) + 1 if last else len(data)
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - start))
            self.send_header("ETag", f'"{_etag(path)}"')
            if commit:
                self.send_header("X-Repo-Commit", commit)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if hub.fault == "drop":
                self.wfile.write(data[start : start + (end - start) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(data[start:end])

        def _status(self, code: int, text: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(text)

    return Handler
