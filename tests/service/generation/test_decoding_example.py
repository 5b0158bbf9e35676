"""docs/examples/constrained_decoding.py runs as written on an exported index, and every beam is an item."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from semid.service.export import export_index
from tests.conftest import ROOT

pytest.importorskip("transformers", reason="the example needs the hf extra (transformers)")

EXAMPLE = ROOT / "docs" / "examples" / "constrained_decoding.py"


@pytest.mark.slow
def test_example_runs_and_every_beam_is_an_item(tmp_path, assigned_index):
    paths = [tmp_path / n for n in ("trie.npz", "vocab.json", "semantic_ids.parquet")]
    export_index(assigned_index, paths[2], vocab=paths[1], trie=paths[0], special_tokens=True)
    done = subprocess.run([sys.executable, str(EXAMPLE), *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("user ")]
    assert len(lines) == 2
    items = [int(x) for line in lines for x in line.split("[")[1].split("]")[0].split(",")]
    assert len(items) == 10 and min(items) >= 0


def test_readme_links_the_example():
    assert "docs/examples/constrained_decoding.py" in (ROOT / "README.md").read_text()


def test_missing_eos_error_names_the_cli_flag():
    from semid.service.generation.hf import SemanticIdLogitsProcessor
    from semid.service.generation.trie import SemanticIdTrie
    from semid.service.generation.vocab import SemanticIdVocab
    from semid.service.ids.layout import IdLayout

    layout = IdLayout(codebook_sizes=(4, 4), dedup_size=4)
    trie = SemanticIdTrie.from_semantic_ids(np.array([[0, 1, 0]]), [7], layout.sizes)
    with pytest.raises(ValueError, match="--special-tokens"):
        SemanticIdLogitsProcessor(trie, SemanticIdVocab.for_layout(layout), prompt_length=1)
