"""--backend ray on a real two-node Ray cluster on this machine (ray.cluster_utils.Cluster): the same
runs as the local processes backend, bit for bit; a node killed mid-sweep; the reproduce report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import DEVNULL

import pytest
import ray
from ray.cluster_utils import Cluster
from safetensors import safe_open
from safetensors.torch import load_file

import lenet
from lenet.cli import main
from lenet.config import ConfigError
from lenet.ray_runner import RUN_FILES, RayRunner, check_reachable, starts_a_cluster
from lenet.runs import RunDir
from lenet.sweeps import expand_grid, sweep_specs

STORE = 150 * 2**20  # object store per node: MNIST's arrays are 55 MB
SWEEP = ["--lr", "0.01", "0.1", "--seeds", "2", "--epochs", "2"]  # 4 runs x 2 epochs: one checkpoint each
ONE_RUN = ["sweep", "--lr", "0.1", "--seeds", "1", "--epochs", "1"]


@pytest.fixture(scope="module")
def cluster():
    """A head node and one worker node, one CPU each; this process is the driver. Shut down after."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE})
    try:
        worker = c.add_node(num_cpus=1, object_store_memory=STORE)
        c.wait_for_nodes()
        ray.init(address=c.address)
        yield c, worker
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory) -> Path:
    """The reference: the same sweep with the local processes backend (one thread per worker)."""
    out = tmp_path_factory.mktemp("local") / "sweep"
    assert main(["sweep", *SWEEP, "--out", str(out), "--backend", "processes", "--workers", "2"]) == 0
    return out


def without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def metadata(path: Path) -> dict:
    with safe_open(path, "pt") as f:
        return f.metadata()


def assert_same_runs(a: Path, b: Path) -> None:
    """Every run directory under a/runs equals b's: weights bit for bit, metrics and results but for
    wall times, config.json but for the command line; the same files (a local run's .lock aside), no
    temporary ones left."""
    names = sorted(p.name for p in (a / "runs").iterdir())
    assert names == sorted(p.name for p in (b / "runs").iterdir())
    for name in names:
        x, y = a / "runs" / name, b / "runs" / name
        files = [sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) for d in (x, y)]
        assert files[0] == files[1] == sorted(RUN_FILES)
        assert not list(x.glob(".*.tmp")), "a half-written file was left behind"
        for file in ("model.safetensors", "checkpoint.safetensors"):  # not bytes: metadata order varies
            tx, ty = (load_file(p / file) for p in (x, y))
            assert tx.keys() == ty.keys() and all(tx[k].equal(ty[k]) for k in tx)
        assert metadata(x / "model.safetensors") == metadata(y / "model.safetensors")
        rows = [[without(json.loads(r), "seconds") for r in (p / "metrics.jsonl").open()] for p in (x, y)]
        assert rows[0] == rows[1] and len(rows[0]) >= 1
        results = [without(json.loads((p / "result.json").read_text()), "train_seconds") for p in (x, y)]
        assert results[0] == results[1]
        # processes start a longer run where its shorter one ended (started_from); Ray trains it whole
        configs = [
            without(json.loads((p / "config.json").read_text()), "command", "started_from") for p in (x, y)
        ]
        assert configs[0] == configs[1]  # torch_threads included: the same thread count


def test_ray_sweep_equals_the_processes_backend(cluster, local_sweep, tmp_path):
    c, _ = cluster
    out = tmp_path / "sweep"
    assert main(["sweep", *SWEEP, "--out", str(out), "--backend", "ray", "--address", c.address]) == 0
    assert_same_runs(out, local_sweep)
    assert (out / "summary.csv").read_text() == (local_sweep / "summary.csv").read_text()
    config = json.loads((out / "runs/lr0.1-seed1/config.json").read_text())
    assert "--backend ray" in config["command"] and config["torch_threads"] == 1
    # the same command again keeps every finished run as it is
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*")}
    assert main(["sweep", *SWEEP, "--out", str(out), "--backend", "ray", "--address", c.address]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*")} == stamps


def test_a_training_error_is_not_retried_and_reads_as_it_does_locally(cluster, tmp_path, capsys):
    c, _ = cluster
    said = []
    for backend in (["sequential"], ["ray", "--address", c.address]):
        out = tmp_path / backend[0]
        (out / "runs/seed0").mkdir(parents=True)
        (out / "runs/seed0/checkpoint.safetensors").write_bytes(b"not a checkpoint")
        code = main([*ONE_RUN, "--out", str(out), "--backend", *backend])
        said.append((code, capsys.readouterr().err.replace(str(out), "OUT")))
    assert said[0] == said[1] and said[0][0] == 1 and said[0][1].count("\n") == 1, said


def test_without_ray_the_command_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    assert main(["sweep", *SWEEP, "--out", str(tmp_path / "sw"), "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert err == "lenet: error: --backend ray needs Ray: pip install 'lenet[ray]'\n"
    assert not (tmp_path / "sw" / "runs").exists()


def test_an_address_where_no_cluster_answers_fails_at_once():
    with pytest.raises(ConfigError, match=r"^--address 127.0.0.1:1: no Ray cluster answers there"):
        check_reachable("127.0.0.1:1")  # Ray itself would retry for minutes


# ---------------------------------------------------------------- addresses, a dead head, loopback (issue 25)


@pytest.mark.parametrize("address", ["garbage", "", "host:port", "host:0", "a b:1", "ray://"])
def test_a_bad_address_is_one_line_before_ray_is_asked(address, tmp_path, capsys):
    """Before: Ray's ValueError traceback (Invalid address format)."""
    with pytest.raises(SystemExit) as exited:
        main(["sweep", *SWEEP, "--out", str(tmp_path / "sw"), "--backend", "ray", "--address", address])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    rule = "must be HOST:PORT of a Ray cluster's head, auto or local"
    assert f"argument --address: {rule} (got {address!r})" in err
    for call in (lambda: RayRunner(address), lambda: lenet.sweep(seeds=1, backend="ray", address=address)):
        with pytest.raises(ConfigError, match=re.escape(f"--address {rule}")):
            call()
    assert not (tmp_path / "sw").exists()


def test_a_ray_address_in_the_environment_that_is_none_is_one_line(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "garbage")
    with pytest.raises(ConfigError, match=r"^Ray found no usable cluster address .*check \$RAY_ADDRESS"):
        starts_a_cluster(None)
    assert starts_a_cluster("local") and not starts_a_cluster("10.0.0.1:6379")


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in (e for e in Path("/proc").iterdir() if e.name.isdigit()):
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # one that just ended
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        found |= set(new := [c for c in children.get(todo.pop(), []) if c not in found])
        todo += new
    return found


def listening(pids: set[int]) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp* write them) where `pids` listen for TCP connections."""
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        inodes |= {link[8:-1] for link in links if link.startswith("socket:[")}
    tables = [Path(f"/proc/net/{name}").read_text().splitlines() for name in ("tcp", "tcp6")]
    rows = [line.split() for table in tables for line in table[1:]]  # (each table has a header line)
    return [row[1] for row in rows if len(row) > 9 and row[3] == "0A" and row[9] in inodes]  # 0A: LISTEN


LOCAL_CLUSTER = """
import json, os, sys
from lenet.ray_runner import RayRunner
runner = RayRunner("local")
assert runner.connect()
print(json.dumps({"pid": os.getpid(), "head": runner.head}), flush=True)
sys.stdin.readline()  # the test reads the sockets meanwhile
"""


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads /proc/net/tcp")
def test_a_new_local_cluster_listens_on_loopback_only():
    """Before: its servers (GCS, raylet, object manager, agents) listened on every interface."""
    driver = subprocess.Popen([sys.executable, "-c", LOCAL_CLUSTER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=DEVNULL, text=True)  # fmt: skip
    try:
        started = json.loads(driver.stdout.readline())
        addresses = listening({started["pid"], *descendants(started["pid"])})
    finally:
        driver.communicate("\n", timeout=120)
    loopback = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")
    assert started["head"].startswith("127.0.0.1:") and len(addresses) >= 3
    assert [a for a in addresses if a.rsplit(":", 1)[0] not in loopback] == []


DEAD_HEAD = """
import json, subprocess, sys, time
from pathlib import Path
from ray.cluster_utils import Cluster
out = Path(sys.argv[1])
c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 150 * 2**20})
args = ["sweep", "--lr", "0.01", "--seeds", "2", "--epochs", "30", "--backend", "ray", "--address", c.address,
        "--out", str(out)]
driver = subprocess.Popen([sys.executable, "-m", "lenet.cli", *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
deadline = time.monotonic() + 300
while not list(out.glob("runs/*/checkpoint.safetensors")) and time.monotonic() < deadline:
    time.sleep(0.05)
c.remove_node(c.head_node, allow_graceful=False)  # the head, and the only node, is gone
killed = time.monotonic()
try:
    code = driver.wait(timeout=120)
except subprocess.TimeoutExpired:
    driver.kill()
    code = None
print(json.dumps({"code": code, "seconds": time.monotonic() - killed, "stderr": driver.stderr.read()}))
c.shutdown()
"""


@pytest.mark.slow
def test_a_dead_head_ends_the_sweep_in_one_line_within_seconds(tmp_path):
    """Before: the driver hung 60 s, then Ray ended it with a C++ log line and no lenet message. Now one
    line a few seconds after the head stops answering, and the process ends ~10 s later (Ray's shutdown)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LENET_DEBUG", "RAY_ADDRESS")}
    harness = subprocess.run([sys.executable, "-c", DEAD_HEAD, str(tmp_path / "sw")], capture_output=True,
                             text=True, timeout=600, env=env)  # fmt: skip
    said = json.loads(harness.stdout.strip().splitlines()[-1])
    assert said["code"] == 1 and said["seconds"] < 45, said
    line = said["stderr"]
    assert line.startswith("lenet: error: the Ray cluster's head at ") and line.count("\n") == 1
    assert "rerun the command to resume the others once the cluster is back" in line


@pytest.mark.slow
def test_reproduce_on_ray_writes_the_local_report(cluster, tmp_path):
    c, _ = cluster
    smoke = ["reproduce", "--seeds", "2", "--epochs", "1", "--long-epochs", "2"]
    assert main([*smoke, "--out", str(tmp_path / "a"), "--backend", "processes", "--workers", "2"]) == 0
    assert main([*smoke, "--out", str(tmp_path / "b"), "--backend", "ray", "--address", c.address]) == 0

    def numbers(out: Path) -> list[str]:  # the report but for its command line and wall times
        made = ("Command:", "Seeds:")
        return [line for line in (out / "report.md").read_text().splitlines() if not line.startswith(made)]

    assert numbers(tmp_path / "a") == numbers(tmp_path / "b")
    assert (tmp_path / "a/summary.csv").read_text() == (tmp_path / "b/summary.csv").read_text()
    assert_same_runs(tmp_path / "a", tmp_path / "b")


@pytest.mark.slow
def test_a_driver_killed_mid_sweep_is_resumed_by_the_same_command(cluster, local_sweep, tmp_path):
    c, _ = cluster
    out = tmp_path / "sweep"
    args = ["sweep", *SWEEP, "--out", str(out), "--backend", "ray", "--address", c.address]
    driver = subprocess.Popen([sys.executable, "-m", "lenet.cli", *args], stdout=DEVNULL, stderr=DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("runs/*/checkpoint.safetensors")) and time.monotonic() < deadline:
            assert driver.poll() is None, "the driver ended before it could be killed"
            time.sleep(0.01)
    finally:
        driver.kill()  # SIGKILL: no clean-up of any kind
        driver.wait()
    assert not all(RunDir(p).finished() for p in out.glob("runs/*"))
    assert main(args) == 0
    assert_same_runs(out, local_sweep)
    assert any("resuming" in p.read_text() for p in out.glob("runs/*/train.log"))


def in_flight_with_checkpoint(out: Path) -> int:
    return sum(
        (run / "checkpoint.safetensors").is_file() and not (run / "result.json").is_file()
        for run in out.glob("runs/*")
    )


LONG = 4  # epochs: after a run's first checkpoint, time for the node to be killed before its run ends


@pytest.fixture(scope="module")
def local_long_sweep(tmp_path_factory) -> Path:
    """The reference of the killed-node test: its sweep, with the local processes backend."""
    out = tmp_path_factory.mktemp("local-long") / "sweep"
    args = ["sweep", "--lr", "0.01", "0.1", "--seeds", "2", "--epochs", str(LONG), "--out", str(out)]
    assert main([*args, "--backend", "processes", "--workers", "2"]) == 0
    return out


def test_a_node_killed_mid_sweep_resumes_elsewhere(cluster, local_long_sweep, tmp_path):
    """Last in this file: it takes the worker node away. Both nodes train a run; once both have a
    checkpoint the worker node dies, and its run finishes on the head from that checkpoint. The runs are
    4 epochs long: with 2 (the other tests' sweep) a busy machine often finished the worker's run before
    the kill took effect, and nothing was left to resume."""
    c, worker = cluster
    out = tmp_path / "sweep"
    specs = sweep_specs(expand_grid({"lr": [0.01, 0.1], "epochs": [LONG]}, range(2)), out)
    ticks = []
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(RayRunner(command="lenet test").run, specs, on_epoch=lambda: ticks.append(1))
        deadline = time.monotonic() + 120
        while in_flight_with_checkpoint(out) < 2 and not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not future.done(), "the sweep ended before the node could be killed"
        c.remove_node(worker, allow_graceful=False)
        results = future.result(timeout=180)
    assert [r.spec for r in results] == specs and len(ticks) == 4 * LONG  # each run, each epoch once
    assert_same_runs(out, local_long_sweep)
    logs = [p.read_text() for p in out.glob("runs/*/train.log")]
    resumed = [log for log in logs if "resuming" in log]
    assert len(resumed) == 1 and f"resuming {out}/runs/" in resumed[0]
