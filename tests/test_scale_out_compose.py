"""docs/deploy/docker-compose.scale-out.yml and its nginx.conf, checked statically (Docker can't run here)."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT
from tests.test_packaging import _check_command

DEPLOY = ROOT / "docs" / "deploy"


def test_scale_out_compose_runs_one_writer_and_read_only_replicas_on_one_volume():
    compose = yaml.safe_load((DEPLOY / "docker-compose.scale-out.yml").read_text())
    services = compose["services"]
    semid = {name: svc for name, svc in services.items() if svc.get("image") == "semid:latest"}
    assert set(semid) == {"writer", "replica-1", "replica-2"}
    for name, svc in semid.items():
        _check_command(svc["command"])
        assert svc["command"][1] == "serve" and "data:/data" in svc["volumes"], name
        assert svc["command"][svc["command"].index("--index") + 1] == "/data/index"
        assert ("--read-only" in svc["command"]) == name.startswith("replica"), name
    assert (DEPLOY / svc["build"]).resolve() == ROOT  # build context: the repository
    balancer = services["balancer"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in balancer["volumes"]
    assert set(balancer["depends_on"]) == set(semid)
    assert "data" in compose["volumes"]


def test_balancer_sends_writes_to_the_writer_and_reads_to_the_replicas():
    conf = (DEPLOY / "nginx.conf").read_text()
    compose = yaml.safe_load((DEPLOY / "docker-compose.scale-out.yml").read_text())
    upstreams = dict(re.findall(r"upstream (\w+) \{(.*?)\}", conf, re.S))
    assert set(upstreams) == {"writer", "replicas"}
    servers = {name: re.findall(r"server ([\w-]+):(\d+)", body) for name, body in upstreams.items()}
    assert servers["writer"] == [("writer", "8000")]
    assert {s for s, _ in servers["replicas"]} == {"replica-1", "replica-2", "writer"}
    assert re.search(r"server writer:8000 backup;", upstreams["replicas"])
    for host, port in servers["replicas"] + servers["writer"]:
        assert host in compose["services"] and f"--port {port}" in " ".join(compose["services"][host]["command"])
    listen = re.search(r"listen (\d+);", conf).group(1)
    assert f"{listen}:{listen}" in compose["services"]["balancer"]["ports"]
    routes = re.search(r"map .*?\{(.*?)\}", conf, re.S).group(1)
    rules = [(re.compile(p), u) for p, u in re.findall(r'"~(.*?)" (\w+);', routes)]
    assert re.search(r"default replicas;", routes)

    def upstream(method: str, uri: str, register: str = "") -> str:
        key = f"{method} {uri} {register}"
        return next((u for p, u in rules if p.search(key)), "replicas")

    assert upstream("POST", "/v1/assign") == "writer"
    assert upstream("POST", "/v1/encode", "true") == "writer"
    assert upstream("POST", "/v1/encode") == "replicas"
    assert upstream("GET", "/v1/prefixes/1-2") == "replicas"
    assert upstream("POST", "/v1/resolve") == "replicas"
    assert upstream("GET", "/v1/assign") == "replicas"  # not a write: 405 from a replica like from the writer
