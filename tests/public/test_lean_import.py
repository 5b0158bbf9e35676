"""`semid` and `semid.generation` import with numpy alone: a subprocess in which importing torch, FAISS, the
server's or training's dependencies fails, as in an environment where only `pip install semid` ran."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = (
    "torch", "faiss", "fastapi", "uvicorn", "starlette", "pydantic", "pydantic_settings", "pyarrow", "scipy",
    "safetensors", "simdjson", "msgspec", "httpx", "click", "tqdm", "prometheus_client", "transformers",
)  # fmt: skip

BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys

    BLOCKED = {BLOCKED!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a numpy-only install)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_the_generation_kit_works_with_numpy_alone():
    done = run_blocked(
        """
        import numpy as np
        import semid, semid.generation, semid.generation.hf
        from semid.generation import IdLayout, SemanticIdTrie, SemanticIdVocab

        sids = np.array([[0, 1, 0], [0, 2, 0], [3, 1, 0]])
        trie = SemanticIdTrie.from_semantic_ids(sids, [10, 11, 12], sizes=(4, 4, 2))
        vocab = SemanticIdVocab.for_layout(IdLayout(codebook_sizes=(4, 4), dedup_size=2), special_tokens=True)
        assert trie.allowed_next([0]) == [1, 2] and trie.item_of([3, 1, 0]) == 12
        assert SemanticIdTrie.from_bytes(trie.to_bytes()).items_of(sids).tolist() == [10, 11, 12]
        mask = trie.allowed_next_batch(np.array([[0], [3]]))
        assert mask[:, :4].tolist() == [[False, True, True, False], [False, True, False, False]]
        assert vocab.from_flat(vocab.to_flat(sids)).tolist() == sids.tolist()
        assert semid.__version__
        print("ok", sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok []"


def test_the_heavy_names_say_which_extra_to_install():
    done = run_blocked(
        """
        import semid
        for name in ("Index", "Tokenizer", "train"):
            try:
                getattr(semid, name)
            except ImportError as err:
                print(name, err)
        import semid.generation.hf
        try:
            semid.generation.hf.SemanticIdLogitsProcessor
        except ImportError as err:
            print("hf", err)
        """
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["Index", "Tokenizer", "train", "hf"]
    assert "pip install 'semid[serve]'" in lines[0]
    for line in lines[1:3]:
        assert "pip install 'semid[train]'" in line, line
    assert "pip install 'semid[hf]'" in lines[3]


def test_the_command_names_the_missing_extra():
    """Without the serve extra (FAISS and FastAPI blocked), the `semid` command says what to install."""
    code = BLOCKER.replace("BLOCKED = ", "BLOCKED = ('faiss', 'fastapi') or ") + textwrap.dedent(
        """
        import sys
        from semid._cli import main
        sys.argv = ["semid", "--help"]
        main()
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.startswith("error: the semid command needs the serve extra: pip install 'semid[serve]'")
    assert "Traceback" not in done.stderr


def test_the_base_install_requires_numpy_only_and_hf_adds_transformers_only():
    from importlib.metadata import requires

    reqs = requires("semid") or []
    base = [r for r in reqs if "extra ==" not in r]
    assert [r.split(">")[0].split("=")[0].strip() for r in base] == ["numpy"], base

    def extra(name: str) -> set[str]:
        marker = f'extra == "{name}"'
        return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip() for r in reqs if marker in r}

    assert extra("hf") == {"transformers"}
    assert {"torch", "safetensors"} <= extra("train") and not extra("train") & {"faiss-cpu", "fastapi"}
    assert {"faiss-cpu", "fastapi", "uvicorn", "semid"} <= extra("serve")  # serve includes semid[train]
    assert {"semid", "pytest", "mypy"} <= extra("dev")
    dev_self = [r for r in reqs if 'extra == "dev"' in r and r.startswith("semid[")]
    assert dev_self and "serve" in dev_self[0] and "docs" in dev_self[0]
