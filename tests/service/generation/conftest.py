"""An index assigned from the tiny synthetic catalog, shared by the generation tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from semid.service.assign import assign_catalog


@pytest.fixture(scope="session")
def assigned_index(tmp_path_factory, tiny_checkpoint, tiny_catalog_file) -> Path:
    out = tmp_path_factory.mktemp("generation") / "index"
    assign_catalog(checkpoint=tiny_checkpoint, catalog=tiny_catalog_file, index_dir=out)
    return out
