"""requirements.lock / requirements-runtime.lock: every dependency pinned with hashes, in step with pyproject.toml
and constraints.txt, and what .ci/run and the Dockerfile install (refreshed by `bash .ci/lock`)."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

LOCK, RUNTIME_LOCK = ROOT / "requirements.lock", ROOT / "requirements-runtime.lock"
CI_EXTRAS = ("dev", "hf", "ui", "ray")
TORCH_WHEELS = Path("/opt/wheels")  # where pip finds the CPU wheel of torch on these machines


def _pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)", line)
        assert match, f"{path.name}: not a hash-pinned requirement: {line[:120]}"
        pins[_norm(match.group(1))] = (match.group(2), re.findall(r"sha256:([0-9a-f]{64})", match.group(3)))
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_norm(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in requirements}


def _extra_names(project: dict, extras: tuple[str, ...]) -> set[str]:
    """Names an install with ``extras`` brings, following extras that name semid itself (dev = semid[serve,...])."""
    names, todo, seen = _names(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in project["optional-dependencies"][extra]:
            own = re.fullmatch(r"semid\[([^\]]+)\]", requirement.replace(" ", ""))
            if own:
                todo.extend(own.group(1).split(","))
            else:
                names |= _names([requirement])
    return names


def test_every_dependency_of_every_ci_extra_is_pinned_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _extra_names(project, CI_EXTRAS)
    assert {"torch", "faiss-cpu", "fastapi", "mkdocs", "mypy"} <= wanted  # the self-referencing extras followed
    pins = _pins(LOCK)
    assert wanted <= set(pins), sorted(wanted - set(pins))
    assert all(hashes for _, hashes in pins.values())


def test_the_runtime_lock_holds_the_runtime_dependencies_at_the_same_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, full = _pins(RUNTIME_LOCK), _pins(LOCK)
    assert _extra_names(project, ("serve", "s3")) <= set(runtime)  # the Dockerfile installs semid[serve,s3]
    assert {name: version for name, (version, _) in runtime.items()} == {name: full[name][0] for name in runtime}, (
        "requirements-runtime.lock disagrees with requirements.lock: run `bash .ci/lock`"
    )
    assert "pytest" not in runtime and "ray" not in runtime


def test_the_locks_keep_the_constraints_pins():
    pins = _pins(LOCK)
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            assert pins[_norm(name)][0].split("+")[0] == version, line


def test_torch_is_the_local_cpu_wheel_and_its_hash_is_listed():
    version, hashes = _pins(LOCK)["torch"]
    assert version == "2.13.0+cpu"
    wheels = sorted(TORCH_WHEELS.glob(f"torch-{version}-*.whl"))
    if not wheels:
        pytest.skip(f"no local torch wheel in {TORCH_WHEELS} (only on these machines)")
    for wheel in wheels:
        assert hashlib.sha256(wheel.read_bytes()).hexdigest() in hashes, wheel.name


def test_ci_installs_from_the_lock_with_hashes_then_the_project_without_deps():
    run = (ROOT / ".ci" / "run").read_text()
    assert "--require-hashes -r requirements.lock" in run
    assert "--no-deps" in run and "-c constraints.txt" not in run
    assert "pip-compile" in (ROOT / ".ci" / "lock").read_text()
