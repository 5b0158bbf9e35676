"""Docker can't run here: the Dockerfile and compose file are checked statically against the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import click
import pytest
import yaml

from semid.service.cli import main
from tests.conftest import ROOT


def _check_command(argv: list[str]) -> None:
    assert argv[0] == "semid", argv
    command = main.commands.get(argv[1])
    assert command is not None, f"compose runs unknown command {argv[1]!r}"
    known = {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts + p.secondary_opts}
    for token in argv[2:]:
        if token.startswith("--"):
            assert token in known, f"`semid {argv[1]}` has no option {token}"
    # the arguments parse: click raises on a missing required option or a bad value type
    ctx = command.make_context(f"semid {argv[1]}", list(argv[2:]), resilient_parsing=False)
    assert ctx.params


def test_compose_services_run_real_cli_commands():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"train", "assign", "api"} <= set(services)
    for name, svc in services.items():
        _check_command(svc["command"])
        assert "data:/data" in svc["volumes"], name
    assert services["api"]["command"][1] == "serve"
    assert "data" in compose["volumes"]


def test_dockerfile_is_cpu_only_non_root_with_healthcheck_and_serves():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "--require-hashes -r requirements-runtime.lock" in text and "whl/cpu" in text
    assert "pip install --no-deps" in text  # the project itself: its dependencies all come from the lock
    cmd = re.search(r"^CMD \[(.*)\]", text, re.M).group(1)
    _check_command([part.strip().strip('"') for part in cmd.split(",")])
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied


HOSTILE = "raise ImportError('a user module named like semid internals was imported')\n"


def _hostile_dir(base) -> object:
    """A working directory holding its own `model` and `service` packages, as recommender repos do."""
    for name in ("model", "service"):
        (base / name).mkdir(parents=True)
        (base / name / "__init__.py").write_text(HOSTILE)
    return base


def _run(argv: list[str], cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def _assert_semid_works(python: Path, script: Path, cwd) -> None:
    for argv in (
        [str(script), "--help"],
        [str(python), "-m", "semid.service.cli", "--help"],
        [str(python), "-c", "import semid.service.cli, semid.service.api.app, semid.model.training.train; print('ok')"],
        [str(python), "-c", "import semid, semid.generation; semid.Index, semid.train; print('ok')"],
    ):
        done = _run(argv, cwd)
        assert done.returncode == 0, f"{argv}: {done.stderr[-2000:]}"
        assert "ok" in done.stdout or done.stdout.startswith("Usage:"), done.stdout


def test_editable_install_ignores_user_model_and_service_packages(tmp_path):
    bin_dir = Path(sys.executable).parent
    _assert_semid_works(Path(sys.executable), bin_dir / "semid", _hostile_dir(tmp_path / "work"))


def test_version_has_one_home():
    from importlib.metadata import version

    from semid.service import __version__
    from semid.service.api.app import create_app

    assert __version__ == version("semid")
    assert create_app().version == __version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in pyproject
    assert not re.search(r"version=\"\d", (ROOT / "service" / "api" / "app.py").read_text())


def test_built_wheel_installs_under_semid_only(tmp_path):
    """`pip wheel .` then a fresh venv: semid.model and semid.service, nothing named model/service at the top."""
    wheel_dir = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = _run([*pip_wheel, "-w", str(wheel_dir), str(ROOT)], tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheel_dir.glob("semid-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        assert "semid" in tops and not tops & {"model", "service"}, tops
        assert "semid/service/api/routes/lookups.py" in zf.namelist()
        for public in ("semid/__init__.py", "semid/py.typed", "semid/index.py", "semid/generation/hf.py"):
            assert public in zf.namelist(), public  # the public API (service/public/) installs as `semid`
        assert not [n for n in zf.namelist() if n.startswith("semid/service/public/")]
    venv = tmp_path / "fresh"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    # the dependencies come from this environment (a path, not a site dir: its editable semid hook stays off)
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    (site / "semid-deps.pth").write_text(f"{deps}\n")
    installed = _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], tmp_path
    )
    if installed.returncode != 0 and "no such option: --python" in installed.stderr:
        pytest.skip("pip is too old for --python")
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert (site / "semid" / "service" / "cli.py").is_file()
    assert not (site / "model").exists() and not (site / "service").exists()
    located = _run([str(python), "-c", "import semid.service.cli as c; print(c.__file__)"], tmp_path)
    assert located.stdout.strip().startswith(str(site)), located.stdout + located.stderr
    _assert_semid_works(python, venv / "bin" / "semid", _hostile_dir(tmp_path / "work"))
