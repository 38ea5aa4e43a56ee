"""Two nodes on one machine: two `accelerate launch --num_machines 2 --machine_rank 0/1` groups (DeepSpeed ZeRO-3 on
the CPU, gloo, 127.0.0.1), running scripts/train_grpo.py as a user does on a cluster.

- Per-node disks: each node runs in its own mount namespace (`unshare --mount`) with its own folder bind-mounted at
  the same --output-dir path, so neither sees the other's files, as with two machines' local disks.
- Shared disk: both nodes use the same folder, as with NFS.

Needs root (or user namespaces) for the mounts: where the machine cannot make them, the per-node tests skip and say
so. CI runs as root. Measured facts: ../shared/notes/multinode.md.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_trainkit.checkpointing import list_checkpoints
from hf_trainkit.checkpointing.marker import read_marker
from tests.testing_utils import ROOT, SUBPROCESS_ENV, TRAIN, assert_same_rng_state


pytest.importorskip("deepspeed", reason="pip install -e '.[deepspeed]'")
pytestmark = pytest.mark.deepspeed

ZERO3_CPU = ROOT / "deepspeed_configs" / "zero3_cpu.yaml"
KILL_AT = ROOT / "tests" / "checkpointing" / "kill_at.py"
ENV = {**SUBPROCESS_ENV, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
ARGS = ("--mode", "w-reinforce", "--no-loss-curve", "--eval-every", "0")
_ports = iter(range(29720, 29800))


def _can_make_mount_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


per_node_disks = pytest.mark.skipif(not _can_make_mount_namespaces(),
                                    reason="this machine cannot make mount namespaces (unshare --mount needs root)")


def node_command(rank: int, port: int, output_dir: Path, argv, disk: Path | None = None, processes_per_node: int = 1,
                 script: tuple = (TRAIN,)) -> list[str]:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3_CPU),
              "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", str(2 * processes_per_node),
              "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
              "--deepspeed_multinode_launcher", "standard", *map(str, script), "--output-dir", str(output_dir),
              *ARGS, *map(str, argv)]
    if disk is None:
        return launch
    # The node's own disk: its folder mounted at the output path, seen by this node's processes only.
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind "$1" "$2" && shift 2 && '
            'exec "$@"', "node", str(disk), str(output_dir), *launch]


class Nodes:
    """Two nodes training into `output_dir`: on a shared disk, or on `disks` (one folder per node)."""

    def __init__(self, root: Path, per_node: bool):
        self.output_dir = root / "out"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.disks = [root / f"disk{i}" for i in range(2)] if per_node else None
        for disk in self.disks or []:
            disk.mkdir(exist_ok=True)

    def disk(self, node: int) -> Path:
        return self.disks[node] if self.disks else self.output_dir

    def start(self, *argv, processes_per_node=1, script=(TRAIN,), env=None) -> list[subprocess.Popen]:
        """Both nodes, started together (each `Popen` is the node's launcher, after unshare and sh exec into it)."""
        port = next(_ports)
        return [subprocess.Popen(
            node_command(rank, port, self.output_dir, argv, self.disks[rank] if self.disks else None,
                         processes_per_node, script),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env={**ENV, **(env or {})},
            start_new_session=True) for rank in range(2)]

    def run(self, *argv, processes_per_node=1, script=(TRAIN,), env=None, timeout=420):
        """Both nodes, started together; [(returncode, output)] per node."""
        return self.wait(self.start(*argv, processes_per_node=processes_per_node, script=script, env=env), timeout)

    @staticmethod
    def wait(processes, timeout=420):
        results = []
        deadline = time.time() + timeout
        for process in processes:
            try:
                output, _ = process.communicate(timeout=max(deadline - time.time(), 1))
            except subprocess.TimeoutExpired:
                for each in processes:
                    os.killpg(each.pid, 9)
                output, _ = process.communicate()
                output += "\n[test: killed at the timeout: a hang]"
            results.append((process.returncode, output))
        return results


def refused(results, *phrases):
    """Both nodes stopped with our one-line error (the launcher adds its own report of a failed worker)."""
    for rank, (code, output) in enumerate(results):
        assert code != 0, output[-3000:]
        assert "train_grpo.py: error:" in output and all(p in output for p in phrases), output[-3000:]
        assert not re.search(r"\[rank\d+\]: Traceback", output), output[-3000:]


def succeeded(results):
    for rank, (code, output) in enumerate(results):
        assert code == 0, f"node {rank} exited {code}:\n{output[-5000:]}"
    return [output for _, output in results]


def curves(run_dir: Path):
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [(h["step"], h["loss"], h["reward"], h["grad_norm"]) for h in state["log_history"] if "reward" in h]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted two-node run on per-node disks: 6 steps, a checkpoint every 2."""
    if not _can_make_mount_namespaces():
        pytest.skip("this machine cannot make mount namespaces (unshare --mount needs root)")
    nodes = Nodes(tmp_path_factory.mktemp("multinode-reference"), per_node=True)
    succeeded(nodes.run("--save-on-each-node", "--max-steps", 6, "--save-steps", 2))
    return nodes


def preempted_after(disk: Path, step: int, mirror: Path | None = None):
    """What a preemption right after the save of `step` leaves: no later checkpoint, no record of the end."""
    for folder in [disk, *([mirror] if mirror else [])]:
        for checkpoint in folder.glob("**/checkpoint-*"):
            if int(checkpoint.name.split("-")[1]) > step:
                shutil.rmtree(checkpoint)
    (disk / "training_complete.json").unlink(missing_ok=True)


def wipe(disk: Path):
    for child in disk.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


@per_node_disks
def test_per_node_disks_train_rotate_and_resume_exactly(tmp_path, reference):
    nodes = Nodes(tmp_path, per_node=True)
    outputs = succeeded(nodes.run("--save-on-each-node", "--max-steps", 6, "--save-steps", 2,
                                  "--save-total-limit", 2, "--report-to", "wandb"))
    assert "2 nodes (1, 1 processes), a disk per node (--save-on-each-node)." in outputs[0]
    # W&B (offline) from the main process only, on its node's disk.
    assert list((nodes.disk(0) / "wandb").glob("offline-run-*")) and not (nodes.disk(1) / "wandb").exists()
    for node in (0, 1):
        infos = list_checkpoints(nodes.disk(node))
        # Rotation ran on each node once both held a newer step complete.
        assert [(i.name, i.valid) for i in infos] == [("checkpoint-4", True), ("checkpoint-6", True)], infos
        marker = infos[0].marker
        assert marker["node"] == {"rank": node, "num_nodes": 2, "ranks": [node]}
        files = set(marker["files"])
        assert f"rng_state_{node}.pth" in files and f"rng_state_{1 - node}.pth" not in files
        shards = {f for f in files if f.endswith("optim_states.pt")}
        assert shards == {f"global_step4/zero_pp_rank_{node}_mp_rank_00_optim_states.pt"}
        assert "latest" in files and "model.safetensors" in files  # each node's own copy, as the flag says
        listing = subprocess.run([sys.executable, "-m", "hf_trainkit.cli", "checkpoints", "list",
                                  str(nodes.disk(node))], capture_output=True, text=True, env=ENV, cwd=ROOT)
        row = [line for line in listing.stdout.splitlines() if "checkpoint-4" in line][0]
        assert f"n{node} 2/2 yes" in row, listing.stdout
        preempted_after(nodes.disk(node), 4)
    # The same command again: both nodes resume from checkpoint-4 and train on exactly as uninterrupted.
    outputs = succeeded(nodes.run("--save-on-each-node", "--max-steps", 6, "--save-steps", 2,
                                  "--save-total-limit", 2))
    assert f"Resuming from {nodes.output_dir / 'checkpoint-4'}" in outputs[0]
    assert curves(nodes.disk(0)) == curves(reference.disk(0))
    assert curves(nodes.disk(1)) == curves(nodes.disk(0))  # node 1 keeps its own trainer state too


@per_node_disks
def test_no_step_complete_on_every_node_stops_with_what_is_missing_where(tmp_path):
    nodes = Nodes(tmp_path, per_node=True)
    succeeded(nodes.run("--save-on-each-node", "--max-steps", 4, "--save-steps", 2))
    shutil.rmtree(nodes.disk(0) / "checkpoint-4")
    shutil.rmtree(nodes.disk(1) / "checkpoint-2")
    (nodes.disk(1) / "checkpoint-4" / "hf_trainkit_complete.json").unlink()
    for node in (0, 1):
        (nodes.disk(node) / "training_complete.json").unlink()
    results = nodes.run("--save-on-each-node", "--max-steps", 4, "--save-steps", 2)
    refused(results, "no checkpoint of", "is complete on every node", "--no-resume")
    assert "node 0 has checkpoint-2; lacks checkpoint-4: its part is not on its disk." in results[0][1]
    assert ("node 1 has no complete checkpoint; lacks checkpoint-2: its part is not on its disk; checkpoint-4: no "
            "completion marker") in results[1][1]
    assert not (nodes.disk(0) / "checkpoint-2" / "rng_state_1.pth").exists()  # nothing was trained or deleted
    assert (nodes.disk(0) / "checkpoint-2").is_dir() and (nodes.disk(1) / "checkpoint-4").is_dir()


def test_save_on_each_node_on_a_shared_disk_is_refused_at_start(tmp_path):
    nodes = Nodes(tmp_path, per_node=False)
    refused(nodes.run("--save-on-each-node", "--max-steps", 2), "--save-on-each-node: --output-dir",
            "is shared between nodes")
    assert not list(nodes.output_dir.glob("checkpoint-*"))


@per_node_disks
@pytest.mark.slow
def test_per_node_disks_without_the_flag_are_refused_at_start(tmp_path):
    nodes = Nodes(tmp_path, per_node=True)
    refused(nodes.run("--max-steps", 2), "is not shared between the nodes", "pass --save-on-each-node")


@per_node_disks
@pytest.mark.slow
def test_kill_9_of_one_node_mid_save_then_both_rerun_is_exact(tmp_path, reference):
    nodes = Nodes(tmp_path, per_node=True)
    results = nodes.run("--save-on-each-node", "--max-steps", 6, "--save-steps", 2, script=(KILL_AT, "mid-save:4"),
                        env={"KILL_NODE": "1"})
    assert results[0][0] != 0 and results[1][0] != 0, "the other node stops too"
    assert (nodes.disk(1) / "checkpoint-4" / "rng_state_1.pth").exists()  # its files were written ...
    assert not (nodes.disk(1) / "checkpoint-4" / "hf_trainkit_complete.json").exists()  # ... but not its marker
    outputs = succeeded(nodes.run("--save-on-each-node", "--max-steps", 6, "--save-steps", 2))
    assert f"Resuming from {nodes.output_dir / 'checkpoint-2'}" in outputs[0]
    assert curves(nodes.disk(0)) == curves(reference.disk(0))


@per_node_disks
@pytest.mark.slow
def test_a_wiped_node_pulls_its_part_from_the_mirror_and_resumes_exactly(tmp_path, reference):
    nodes = Nodes(tmp_path, per_node=True)
    mirror = tmp_path / "mirror"  # outside the mounted folder: both nodes reach it, as they would a bucket
    argv = ("--save-on-each-node", "--max-steps", 6, "--save-steps", 2, "--checkpoint-mirror", mirror)
    succeeded(nodes.run(*argv))
    assert sorted(p.name for p in mirror.iterdir()) == ["node-0", "node-1"]
    preempted_after(nodes.disk(0), 4, mirror)
    wipe(nodes.disk(1))  # a replaced machine: nothing of the run on its disk
    outputs = succeeded(nodes.run(*argv))
    assert "Node 1: pulled its part of checkpoint-4" in outputs[1]
    assert f"Resuming from {nodes.output_dir / 'checkpoint-4'}" in outputs[0]
    assert curves(nodes.disk(0)) == curves(reference.disk(0))
    assert list_checkpoints(nodes.disk(1))[-1].valid


@per_node_disks
@pytest.mark.slow
def test_sigterm_on_one_node_saves_and_stops_both_at_the_same_step(tmp_path):
    nodes = Nodes(tmp_path, per_node=True)
    processes = nodes.start("--save-on-each-node", "--max-steps", 5000, "--save-steps", 100000, "--quiet")
    deadline = time.time() + 300
    while not (nodes.disk(0) / "control" / "status.json").exists():  # node 0 is training
        assert processes[0].poll() is None and time.time() < deadline
        time.sleep(0.2)
    time.sleep(1)
    processes[1].send_signal(signal.SIGTERM)  # node 1's launcher only, which forwards it to its worker
    results = Nodes.wait(processes, timeout=120)
    # Exit 128 + SIGTERM after a clean save, as a scheduler expects (the launchers report that as a failed worker).
    assert all(code != 0 and "killed at the timeout" not in output for code, output in results), results
    assert "exitcode  : 143" in results[0][1] and "Stopped by SIGTERM after saving step" in results[0][1]
    steps = []
    for node in (0, 1):
        infos = list_checkpoints(nodes.disk(node))
        assert len(infos) == 1 and infos[0].valid and infos[0].marker["reason"] == "preempt", infos
        assert json.loads((infos[0].path / "hf_trainkit_nodes.json").read_text())["nodes"] == [
            {"node": 0, "complete": True, "problem": None}, {"node": 1, "complete": True, "problem": None}]
        steps.append(infos[0].step)
    assert steps[0] == steps[1]


@pytest.mark.slow
def test_shared_disk_train_and_resume_exactly(tmp_path, reference):
    nodes = Nodes(tmp_path, per_node=False)
    outputs = succeeded(nodes.run("--max-steps", 6, "--save-steps", 2))
    assert "2 nodes (1, 1 processes), one shared --output-dir." in outputs[0]
    infos = list_checkpoints(nodes.output_dir)
    assert [i.valid for i in infos] == [True] * 3 and "node" not in infos[0].marker
    assert {f for f in infos[0].marker["files"] if f.startswith("rng_state")} == {"rng_state_0.pth",
                                                                                  "rng_state_1.pth"}
    preempted_after(nodes.output_dir, 4)
    outputs = succeeded(nodes.run("--max-steps", 6, "--save-steps", 2))
    assert f"Resuming from {nodes.output_dir / 'checkpoint-4'}" in outputs[0]
    assert curves(nodes.output_dir) == curves(reference.disk(0))


@per_node_disks
@pytest.mark.slow
def test_another_process_count_per_node_under_zero3(tmp_path):
    shared = Nodes(tmp_path / "shared", per_node=False)
    succeeded(shared.run("--max-steps", 2, "--save-steps", 2))
    (shared.output_dir / "training_complete.json").unlink()
    outputs = succeeded(shared.run("--max-steps", 3, "--save-steps", 2, processes_per_node=2))
    assert "written by 2 processes, resuming with 4: converting it" in outputs[0]
    assert json.loads((shared.output_dir / "trainer_state.json").read_text())["global_step"] == 3
    # With a disk per node each node holds only its ranks' shards: said at start, nothing trained or touched.
    apart = Nodes(tmp_path / "apart", per_node=True)
    succeeded(apart.run("--save-on-each-node", "--max-steps", 2, "--save-steps", 2))
    (apart.disk(0) / "training_complete.json").unlink()
    (apart.disk(1) / "training_complete.json").unlink()
    refused(apart.run("--save-on-each-node", "--max-steps", 3, processes_per_node=2),
            "needs every shard in one folder")


@per_node_disks
@pytest.mark.slow
def test_per_node_disks_with_async_saves_complete_on_every_node_and_resume_as_sync(tmp_path, reference):
    """`--async-save` with a disk per node: each node's writer writes its part and marks it only once both nodes'
    files are on disk; every checkpoint is complete on each node as in the synchronous `reference`, and after the
    same preemption the resume picks the same step (checkpoint-4, as the synchronous test above) and trains on
    exactly as the synchronous run."""
    nodes = Nodes(tmp_path, per_node=True)
    argv = ("--save-on-each-node", "--max-steps", 6, "--save-steps", 2, "--async-save")
    outputs = succeeded(nodes.run(*argv))
    assert "Waiting for the background write of checkpoint-6 to finish (the end of training)" in outputs[0]
    for node in (0, 1):
        disk, synchronous = nodes.disk(node), reference.disk(node)
        infos = list_checkpoints(disk)
        assert [(i.name, i.valid) for i in infos] == [(i.name, True) for i in list_checkpoints(synchronous)], infos
        assert not list(disk.glob("checkpoint-*/hf_trainkit_writing.json"))
        for info in infos:
            assert info.marker["node"] == {"rank": node, "num_nodes": 2, "ranks": [node]}
            assert json.loads((info.path / "hf_trainkit_nodes.json").read_text())["nodes"] == [
                {"node": 0, "complete": True, "problem": None}, {"node": 1, "complete": True, "problem": None}]
            files = info.marker["files"]
            assert set(files) == set(read_marker(synchronous / info.name)["files"])  # the same files, the same part
            for name, size in files.items():  # each rank's shard as the synchronous save wrote it
                if name.endswith((".pt", ".safetensors")):
                    assert (synchronous / info.name / name).stat().st_size == size, (node, info.name, name)
            rng = f"rng_state_{node}.pth"
            assert_same_rng_state(info.path / rng, synchronous / info.name / rng)
            assert (info.path / "model.safetensors").read_bytes() == \
                (synchronous / info.name / "model.safetensors").read_bytes()
        assert curves(disk) == curves(synchronous)
        preempted_after(disk, 4)
    outputs = succeeded(nodes.run(*argv))
    assert f"Resuming from {nodes.output_dir / 'checkpoint-4'}" in outputs[0]
    assert curves(nodes.disk(0)) == curves(reference.disk(0))
    assert curves(nodes.disk(1)) == curves(nodes.disk(0))
    assert all(i.valid for node in (0, 1) for i in list_checkpoints(nodes.disk(node)))
