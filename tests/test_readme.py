"""README's commands are executed as written: the quickstart line, and the test line is what .ci/run runs."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"


def _block(name: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {name} -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert match, f"README.md has no code block marked <!-- {name} -->"
    return match.group(1).strip()


def test_readme_has_exactly_two_commands_for_a_fresh_machine():
    setup, tests = _block("quickstart"), _block("tests")
    assert len(setup.splitlines()) == 1 and len(tests.splitlines()) == 1
    assert "semid quickstart" in setup and "constraints.txt" in setup
    assert tests in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_quickstart_runs_as_written():
    command = _block("quickstart")
    done = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    out = ROOT / "quickstart"
    for name in ("catalog.parquet", "checkpoint/model.safetensors", "index/manifest.json", "semantic_ids.parquet"):
        assert (out / name).is_file(), name
    assert "done. Serve it with" in done.stdout
    import pyarrow.parquet as pq

    ids = pq.read_table(out / "semantic_ids.parquet").column("semantic_id").to_pylist()
    assert len(ids) == 10_000 and len({tuple(s) for s in ids}) == 10_000
