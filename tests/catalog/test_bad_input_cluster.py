"""A local ingest opens no dashboard and listens on the loopback interface only (issue 15, item 13)."""

from __future__ import annotations

import io
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

import catalog
from catalog.writer import _client
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_visium


def _listening() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(os.getpid()).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def _status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@contextmanager
def _captured_logs() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield buf
    finally:
        root.removeHandler(handler)


def test_local_cluster_binds_loopback_without_dashboard() -> None:
    before = _listening()
    with _captured_logs() as logs:
        a = _client(1, None)
        b = _client(1, None)  # a second ingest at the same time (e.g. another user's job)
    try:
        opened = _listening() - before
        assert opened, "dask opens its HTTP servers"
        assert {ip for ip, _ in opened} == {"127.0.0.1"}, opened
        assert all(port != 8787 for _, port in opened), opened
        for _, port in opened:
            assert _status(port) == 404  # no dashboard page
        assert "already in use" not in logs.getvalue()
        assert a[0].submit(sum, [1, 2]).result() == 3 and b[0].submit(sum, [3]).result() == 3
    finally:
        for client, cluster in (a, b):
            client.close()
            cluster.close()


def test_dashboard_only_where_asked() -> None:
    with socket.socket() as probe:  # a free port to ask for
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = _listening()
    client, cluster = _client(1, None, f"127.0.0.1:{port}")
    try:
        opened = _listening() - before
        assert ("127.0.0.1", port) in opened and {ip for ip, _ in opened} == {"127.0.0.1"}, opened
        assert _status(port) == 200  # the dashboard (or, without bokeh, dask's page saying it is missing)
    finally:
        client.close()
        cluster.close()


def test_ingest_listens_on_loopback_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = make_visium(tmp_path / "s", n_rows=5, n_cols=5, seed=2)
    seen: list[set[tuple[str, int]]] = []
    import catalog.writer as w

    real = w._client

    def spy(*args: object, **kwargs: object) -> object:
        out = real(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(_listening())
        return out

    monkeypatch.setattr(w, "_client", spy)
    before = _listening()
    cat = catalog.create(tmp_path / "cat")
    rep = cat.ingest([s.path], options=ReadOptions(sample_id="s"), workers=1)
    assert rep.ingested and len(seen) == 1
    opened = seen[0] - before
    assert opened and {ip for ip, _ in opened} == {"127.0.0.1"}, opened
