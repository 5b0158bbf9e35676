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


OBJECT_STORE = DEPLOY / "docker-compose.object-store.yml"
AWS_VARIABLES = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}


def _serving(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image") == "semid:latest"}


def test_object_store_compose_serves_one_writer_and_read_only_replicas_from_the_bucket_not_a_volume():
    compose = yaml.safe_load(OBJECT_STORE.read_text())
    services = compose["services"]
    semid = _serving(compose)
    assert set(semid) == {"catalog", "train", "assign", "writer", "replica-1", "replica-2"}
    servers = {name: svc for name, svc in semid.items() if svc["command"][1] == "serve"}
    assert set(servers) == {"writer", "replica-1", "replica-2"}
    store = services["store"]
    port = store["command"][store["command"].index("--address") + 1].lstrip(":")
    for name, svc in semid.items():
        _check_command(svc["command"])
        assert (DEPLOY / svc["build"]).resolve() == ROOT, name
        env = svc["environment"]
        assert AWS_VARIABLES <= set(env), name  # the standard variables, as boto3 / pyarrow / the AWS CLI read them
        assert env["AWS_ENDPOINT_URL"] == f"http://store:{port}", name
        assert svc["depends_on"]["create-bucket"] == {"condition": "service_completed_successfully"}, name
    for name, svc in servers.items():
        assert svc["command"][svc["command"].index("--index") + 1] == "s3://semid/index", name
        assert ("--read-only" in svc["command"]) == name.startswith("replica"), name
        assert "volumes" not in svc, name  # the index is in the store: no shared volume between servers
        assert svc["restart"] == "unless-stopped", name
    assign = semid["assign"]["command"]
    assert assign[1] == "assign" and assign[assign.index("--index") + 1] == "s3://semid/index"
    assert all(semid[job]["profiles"] == ["jobs"] for job in ("catalog", "train", "assign"))
    assert "SEMID_API_KEY" in servers["writer"]["environment"]


def test_object_store_compose_creates_the_bucket_before_any_semid_container_and_pins_its_images():
    compose = yaml.safe_load(OBJECT_STORE.read_text())
    services = compose["services"]
    bucket = services["create-bucket"]
    assert bucket["depends_on"]["store"] == {"condition": "service_healthy"}
    assert "healthcheck" in services["store"] and "store:/data" in services["store"]["volumes"]
    script = " ".join(bucket["command"])
    assert "create-bucket --bucket semid" in script and "head-bucket --bucket semid ||" in script  # rerun-safe
    assert AWS_VARIABLES <= set(bucket["environment"])
    # the store's root credentials are the ones every client is given
    s3 = bucket["environment"]
    assert services["store"]["environment"]["MINIO_ROOT_USER"] == s3["AWS_ACCESS_KEY_ID"]
    assert services["store"]["environment"]["MINIO_ROOT_PASSWORD"] == s3["AWS_SECRET_ACCESS_KEY"]
    for name, svc in services.items():
        if svc.get("image") != "semid:latest":
            image = svc["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"
    assert {"data", "store"} <= set(compose["volumes"])


def test_object_store_balancer_routes_writes_to_the_writer_service_of_that_compose_file():
    compose = yaml.safe_load(OBJECT_STORE.read_text())
    balancer = compose["services"]["balancer"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in balancer["volumes"]
    assert set(balancer["depends_on"]) == {"writer", "replica-1", "replica-2"}
    conf = (DEPLOY / "nginx.conf").read_text()
    upstreams = dict(re.findall(r"upstream (\w+) \{(.*?)\}", conf, re.S))
    for body in upstreams.values():
        for host, port in re.findall(r"server ([\w-]+):(\d+)", body):
            command = compose["services"][host]["command"]
            assert f"--port {port}" in " ".join(command), host
    writer_hosts = re.findall(r"server ([\w-]+):", upstreams["writer"])
    assert writer_hosts == ["writer"] and "--read-only" not in compose["services"]["writer"]["command"]
    listen = re.search(r"listen (\d+);", conf).group(1)
    assert f"{listen}:{listen}" in balancer["ports"]
