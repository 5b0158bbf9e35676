"""Docker can't run here: the Dockerfile and compose file are checked statically against the CLI."""

from __future__ import annotations

import re

import click
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
    assert "-c constraints.txt" in text and "whl/cpu" in text
    cmd = re.search(r"^CMD \[(.*)\]", text, re.M).group(1)
    _check_command([part.strip().strip('"') for part in cmd.split(",")])
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied
