"""The climbmix download path of prepare.py against parquet shards served from 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import prepare


class ShardServer:
    """Serves files with scripted faults: each request to a path pops its next behaviour (default: serve it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.script: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append((name, self.headers.get("Range")))
                path = server.root / name
                if not path.exists():
                    self.send_error(404)
                    return
                behaviour = server.script.get(name, []).pop(0) if server.script.get(name) else "ok"
                if behaviour == "500":
                    self.send_error(500)
                    return
                data = path.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
                if behaviour == "corrupt":
                    data = data[:100] + bytes(b ^ 0x5A for b in data[100:200]) + data[200:]
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.end_headers()
                if behaviour == "cut":  # promise the whole body, send half, drop the connection
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ShardServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def write_shard(path: Path, seed: int, rows: int = 40) -> None:
    texts = [f"Document {seed}-{i}: the quick brown fox jumps over the lazy dog. " * (3 + i % 5) for i in range(rows)]
    pq.write_table(pa.table({"text": texts}), path)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ShardServer]:
    root = tmp_path / "remote"
    root.mkdir()
    for index in (0, 1, prepare.CLIMBMIX_VAL_SHARD):
        write_shard(root / prepare.shard_name(index), index)
    with ShardServer(root) as s:
        yield s


def fetch(server: ShardServer, dest_dir: Path, index: int = 0, retries: int = 3) -> Path:
    sleeps: list[float] = []
    name = prepare.shard_name(index)
    path = prepare.download_file(f"{server.url}/{name}", dest_dir / name, retries=retries, backoff=0.5,
                                 sleep=sleeps.append)
    fetch.sleeps = sleeps  # type: ignore[attr-defined]
    return path


def test_a_failed_request_is_retried_with_backoff(server: ShardServer, tmp_path: Path) -> None:
    server.script[prepare.shard_name(0)] = ["500", "500"]
    path = fetch(server, tmp_path / "data")
    assert path.read_bytes() == (server.root / path.name).read_bytes()
    assert fetch.sleeps == [0.5, 1.0]  # type: ignore[attr-defined]
    assert not list((tmp_path / "data").glob("*.tmp"))


def test_a_corrupt_shard_is_detected_discarded_and_fetched_again(server: ShardServer, tmp_path: Path) -> None:
    server.script[prepare.shard_name(0)] = ["corrupt"]
    path = fetch(server, tmp_path / "data")
    assert path.read_bytes() == (server.root / path.name).read_bytes()
    assert [r for r in server.requests] == [(path.name, None), (path.name, None)]  # started over, no resume


def test_a_shard_that_stays_corrupt_fails_with_a_clear_error_and_leaves_nothing(
        server: ShardServer, tmp_path: Path) -> None:
    server.script[prepare.shard_name(0)] = ["corrupt"] * 3
    with pytest.raises(prepare.PrepareError, match="after 3 attempts.*sha256"):
        fetch(server, tmp_path / "data")
    assert not list((tmp_path / "data").iterdir())


def test_an_interrupted_download_is_resumed_from_where_it_stopped(server: ShardServer, tmp_path: Path) -> None:
    name = prepare.shard_name(0)
    server.script[name] = ["cut"]
    path = fetch(server, tmp_path / "data")
    size = (server.root / name).stat().st_size
    assert path.read_bytes() == (server.root / name).read_bytes()
    assert server.requests[0] == (name, None)
    assert server.requests[1] == (name, f"bytes={size // 2}-")


def test_climbmix_is_prepared_from_downloaded_shards_with_a_pinned_validation_shard(
        server: ShardServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTORESEARCH_DATA", "climbmix")
    monkeypatch.setenv("AUTORESEARCH_DATA_URL", server.url)
    monkeypatch.setenv("AUTORESEARCH_VOCAB_SIZE", "300")
    monkeypatch.setenv("AUTORESEARCH_SEQ_LEN", "16")
    monkeypatch.setenv("AUTORESEARCH_EVAL_TOKENS", "64")
    assert prepare.main(["--source", "climbmix", "--num-shards", "2", "--workers", "3"]) == 0
    data = tmp_path / "cache" / "climbmix" / "data"
    assert sorted(p.name for p in data.iterdir()) == sorted(
        prepare.shard_name(i) for i in (0, 1, prepare.CLIMBMIX_VAL_SHARD))
    prepared = prepare.load_prepared()
    inputs, targets = prepare.eval_windows(prepared)
    assert inputs.shape == (4, 16) and prepared.token_bytes.size == 300
    requests = len(server.requests)
    assert prepare.main(["--source", "climbmix", "--num-shards", "2"]) == 0  # a second run downloads nothing
    assert len(server.requests) == requests
