"""benchmarks/serve_workers.py's memory breakdown: a memory-mapped segment vector file is counted as such, and the
kinds add up to the process's RSS (the figures say what each worker holds and what is shared)."""

from __future__ import annotations

import mmap
import os

from benchmarks.serve_workers import memory, memory_by_mapping


def test_a_mapped_vector_file_is_its_own_kind_and_the_kinds_add_up_to_the_rss(tmp_path):
    path = tmp_path / "seg-000001.vectors"
    path.write_bytes(os.urandom(4 << 20))
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert sum(mapped[i] for i in range(0, len(mapped), 4096)) >= 0  # touch every page
        kinds = memory_by_mapping(os.getpid())
        rollup = memory([os.getpid()])[0]
    vectors = kinds["segment vector files (mmap)"]
    assert 3.9 <= vectors["rss_mb"] <= 4.1
    assert kinds["anonymous (model, index arrays, Arrow buffers)"]["rss_mb"] > 0
    assert kinds["shared libraries"]["rss_mb"] > 0
    total = sum(v["rss_mb"] for v in kinds.values())
    assert abs(total - rollup["rss_mb"]) < 0.05 * rollup["rss_mb"]  # smaps vs smaps_rollup, read moments apart
