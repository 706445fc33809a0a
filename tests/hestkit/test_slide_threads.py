"""hestkit.slide.thread_slide: one open slide per thread, reused, closed when replaced."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from hestkit.slide import open_slide, thread_slide
from hestkit.synthetic import write_pyramidal_tiff


def _slide(path: Path, value: int) -> Path:
    def render(ds: float, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        return np.full((h, w, 3), value, dtype=np.uint8)

    write_pyramidal_tiff(path, height=600, width=700, render=render, pixel_size_um=0.5, tile=256)
    return path


def test_thread_slide_is_reused_per_thread_and_replaced_per_path(tmp_path: Path) -> None:
    a, b = _slide(tmp_path / "a.tif", 40), _slide(tmp_path / "b.tif", 200)
    s1 = thread_slide(a)
    assert thread_slide(a) is s1
    assert (s1.width, s1.height) == (700, 600)
    s2 = thread_slide(b)
    assert s2 is not s1 and s2.path == b
    assert abs(int(s2.read_region(0, 10, 10, 8, 8).mean()) - 200) <= 2
    other: list[object] = []
    t = threading.Thread(target=lambda: other.append(thread_slide(b)))
    t.start()
    t.join()
    assert other[0] is not s2  # each thread has its own handle
    with open_slide(a) as fresh:
        assert np.array_equal(fresh.read_region(0, 0, 0, 16, 16), thread_slide(a).read_region(0, 0, 0, 16, 16))


def test_thread_slide_is_closed_when_its_thread_ends(tmp_path: Path) -> None:
    import gc
    import warnings

    a = _slide(tmp_path / "a.tif", 90)
    opened: list[object] = []

    def work() -> None:
        s = thread_slide(a)
        s.read_region(0, 0, 0, 8, 8)
        opened.append(s)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        t = threading.Thread(target=work)
        t.start()
        t.join()
        del t
        gc.collect()
    leaked = [w for w in caught if issubclass(w.category, ResourceWarning) and "a.tif" in str(w.message)]
    assert leaked == []
    tf = opened[0]._b._tf  # type: ignore[attr-defined]  # the tifffile backend's TiffFile
    assert tf.filehandle.closed  # closed explicitly, not merely unreferenced
