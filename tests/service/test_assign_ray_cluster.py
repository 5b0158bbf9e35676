"""`semid assign --engine ray --ray-address`: a separate driver process joins a running multi-node Ray cluster.

The cluster is Ray's own multi-node test harness, `ray.cluster_utils.Cluster`, started once for the module: a
head node and a second node, each its own raylet and object store, on this one machine. Each node declares 2
CPUs (logical; the encoding is tiny) so that `--workers 2` starts both encoding actors at once, a CPU left
for the reads (`assign_ray._actor_pool`). `semid assign` runs in a subprocess with `--ray-address`, from
another working directory and with relative paths, as on a cluster where workers do not share the driver's
directory. Ray's own setting RAY_DATA_PARQUET_BIN_PACKING_BYTES makes the small catalog several read units
(by default Ray packs up to 128 MiB in one): its rows arrive in several blocks, read on both nodes, as a big
catalog's would; RAY_DATA_PARQUET_FOOTER_NUM_ACTORS keeps the run light.

Ray in this process: the module connects to its own cluster, to read its actor table, and fails if another
Ray is still initialised here (`test_assign_ray.py` shuts its local Ray down when its
module ends). The tests skip when the extra `semid[ray]` is not installed, unless SEMID_RAY_REQUIRED=1 (CI),
where they fail instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from semid.model.data.catalog import Catalog
from semid.model.data.synthetic import write_catalog
from semid.service.cli import main
from tests.conftest import assert_same_run, cli_export, colliding_catalog

SEMID = [sys.executable, "-m", "semid.service.cli"]
ENCODER = "MapWorker(MapBatches(EncodeBatches))"  # Ray Data's class name for the EncodeBatches actors
READ_UNIT_BYTES = "16384"  # a read unit per ~200 catalog rows
RAY_SETTINGS = {  # Ray's own settings, for the cluster's workers and for the driver
    "RAY_DATA_PARQUET_BIN_PACKING_BYTES": READ_UNIT_BYTES,
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "2",  # else 32 actor processes read the few Parquet footers, per run
}
DRIVER_TIMEOUT_S = 300  # a hang guard only


def _import_ray():
    if os.environ.get("SEMID_RAY_REQUIRED") == "1":
        import ray
    else:
        ray = pytest.importorskip("ray", reason="the Ray engine's extra is not installed: pip install 'semid[ray]'")
    return ray


@contextlib.contextmanager
def _env(**values: str):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def cluster():
    ray = _import_ray()
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.fail("a Ray is still initialised in this process; this module connects to its own cluster")
    with _env(**RAY_SETTINGS):  # the nodes' processes keep the environment they start with
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        with _env(**RAY_SETTINGS):
            cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        # Cluster advertises itself as this machine's default Ray (/tmp/ray/ray_current_cluster); withdraw
        # that, so a plain ray.init() elsewhere on the machine starts its own Ray as usual.
        from ray._common.utils import reset_ray_address

        reset_ray_address()
        ray.init(address=cluster.address, logging_level="WARNING")
        nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert len(nodes) == 2
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def _encoder_actors() -> dict[str, tuple[str, int]]:
    """Every EncodeBatches actor the cluster has known, dead ones included (the GCS actor table; Ray's state
    API would need the dashboard, which `semid[ray]` does not install): actor id -> (node id, process id; 0
    if the actor never got a process)."""
    from ray._private.state import actors

    return {
        aid: (actor["Address"]["NodeID"], actor["Pid"])
        for aid, actor in actors().items()
        if actor["ActorClassName"] == ENCODER
    }


def _driver(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`semid assign` in its own process, as a user on a cluster node runs it."""
    env = {**os.environ, **RAY_SETTINGS, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [*SEMID, "assign", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S
    )


def _local(args: list[str]) -> dict:
    result = CliRunner().invoke(main, ["assign", *args, "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_cluster_run_gives_the_local_enginescli_export(cluster, tiny_checkpoint, tmp_path):
    """Half the colliding catalog onto an empty index, then the whole catalog onto that index (which now
    holds items), each time by a driver process joining the 2-node cluster and by the single-machine engine:
    same summary, byte-identical export; each run had an encoding actor process on each node (which batches
    each actor gets is Ray Data's choice: with a catalog this small one actor may encode them all)."""
    ray_cluster, nodes = cluster
    colliding = colliding_catalog()
    half = len(colliding) // 2
    catalogs = {
        "first": Catalog(item_ids=colliding.item_ids[:half], embeddings=colliding.embeddings[:half]),
        "full": colliding,
    }
    for name, catalog in catalogs.items():  # row groups of 50 rows: several read units
        path = write_catalog(catalog, tmp_path / f"{name}.parquet")
        pq.write_table(pq.read_table(path), path, row_group_size=50)
    checkpoint = os.path.relpath(tiny_checkpoint, tmp_path)  # the driver gets relative paths
    flags = ["--batch-rows", "64", "--json", "--quiet"]
    seen = _encoder_actors()
    for step, name in enumerate(catalogs):
        catalog = ["--catalog", f"{name}.parquet", "--engine", "ray", "--ray-address", ray_cluster.address]
        run = _driver(["--checkpoint", checkpoint, *catalog, "--index", "ray", "--workers", "2", *flags], tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Traceback" not in run.stderr, run.stderr  # workers' log lines stay in their log files without -v
        catalog = ["--catalog", str(tmp_path / f"{name}.parquet")]
        local = _local(["--checkpoint", str(tiny_checkpoint), *catalog, "--index", str(tmp_path / "local"), *flags])
        assert local["existing_items"] == (half if step else 0) and local["fallback_items"] > 0
        assert_same_run(local, json.loads(run.stdout.strip().splitlines()[-1]))
        exported = cli_export(tmp_path / "ray", tmp_path / f"ray-{step}.parquet")
        assert exported == cli_export(tmp_path / "local", tmp_path / f"local-{step}.parquet")
        actors = {aid: where for aid, where in _encoder_actors().items() if aid not in seen}
        seen.update(actors)
        assert {node for node, pid in actors.values() if pid} == nodes, actors  # a process on each node


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_at_the_address_is_one_line_error(tiny_checkpoint, tiny_catalog_file, tmp_path):
    """No cluster listening at --ray-address: one line, exit code 2, no index created (Ray alone would retry
    for many minutes). Needs no cluster, but runs Ray's import like the others."""
    _import_ray()
    address = f"127.0.0.1:{_free_port()}"
    args = ["--checkpoint", str(tiny_checkpoint), "--catalog", str(tiny_catalog_file), "--index", "idx"]
    run = _driver([*args, "--engine", "ray", "--ray-address", address], tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stdout == "" and "Traceback" not in run.stderr
    assert run.stderr.startswith(f"error: no Ray cluster answers at {address} (Connection refused)")
    assert run.stderr.count("\n") == 1, run.stderr
    assert not (tmp_path / "idx").exists()


class _RecordingRay:
    """Stands in for the `ray` module where `_ray_session` calls it: records `init`'s arguments."""

    def __init__(self) -> None:
        self.inits: list[dict] = []
        context = SimpleNamespace(execution_options=SimpleNamespace())
        self.data = SimpleNamespace(DataContext=SimpleNamespace(get_current=lambda: context))

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.inits.append(kwargs)

    def shutdown(self) -> None:
        pass


def test_without_an_address_the_driver_starts_a_local_ray():
    """No --ray-address: a new local Ray even where RAY_ADDRESS (or `ray start`'s address file) names a
    cluster; a plain ray.init() would join that cluster, then refuse the CPU count."""
    from semid.service.assign_ray import _ray_session

    ray = _RecordingRay()
    with _ray_session(ray, None, progress=False):
        pass
    assert len(ray.inits) == 1 and ray.inits[0]["address"] == "local" and ray.inits[0]["num_cpus"] >= 1
