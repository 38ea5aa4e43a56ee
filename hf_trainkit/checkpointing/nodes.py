"""Several machines: which node each process is on, whether `--output-dir` is one folder all nodes share or each
node's own disk, and the decisions that need every node's view of its disk (where to resume, what rotation may
delete).

With per-node disks (`save_on_each_node`), each node holds its own part of a checkpoint: its ranks' DeepSpeed shards
and RNG states, and its own copy of what `save_on_each_node` writes (trainer state, config, weights, DeepSpeed's
`latest`). Each node's completion marker lists its part and says whose it is (`"node"`), so each node validates its
part on its own disk. The decisions are pure functions over every node's view (`agreed_resume_step`,
`complete_on_every_node`), fed by one gather, so every rank takes the same one.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..distributed import barrier, broadcast_from_main, gather_lists, rank_and_world


NODES_RECORD = "hf_trainkit_nodes.json"
_PROBE_PREFIX = ".hf_trainkit_disk_probe"


@dataclass(frozen=True)
class NodeLayout:
    """Where the processes run: `ranks[i]` are the global ranks of node i; this process is on node `node`."""

    node: int = 0
    ranks: tuple[tuple[int, ...], ...] = ((0,),)
    per_node_disks: bool = False

    @property
    def num_nodes(self) -> int:
        return len(self.ranks)

    @property
    def ranks_here(self) -> tuple[int, ...]:
        return self.ranks[self.node]

    @property
    def views_differ(self) -> bool:
        """Whether the nodes see different disks: decisions then need every node's view, not the main one's."""
        return self.per_node_disks and self.num_nodes > 1

    def marker_fields(self) -> dict:
        """What a node's completion marker records about whose part it is (empty on one shared disk)."""
        if not self.per_node_disks:
            return {}
        return {"node": {"rank": self.node, "num_nodes": self.num_nodes, "ranks": list(self.ranks_here)}}


def node_key() -> str:
    """What tells this process's machine apart: the node rank torchrun announces (GROUP_RANK; `accelerate launch`
    multi-node with the standard launcher sets it), else the host name."""
    return os.environ.get("GROUP_RANK") or os.environ.get("NODE_RANK") or socket.gethostname()


def current_layout(per_node_disks: bool) -> NodeLayout:
    """The layout of the running job (one collective: every rank must call it at the same point)."""
    rank, _ = rank_and_world()
    keys = gather_lists([(node_key(), rank)])
    nodes: dict[str, list[int]] = {}
    for key, global_rank in sorted(keys, key=lambda pair: pair[1]):
        nodes.setdefault(key, []).append(global_rank)
    ranks = tuple(tuple(members) for members in nodes.values())
    node = next(i for i, members in enumerate(ranks) if rank in members)
    return NodeLayout(node=node, ranks=ranks, per_node_disks=per_node_disks)


# --- is the folder shared? -------------------------------------------------------------------------------------------

def disk_layout_problem(seen: list[set[int]], per_node_disks: bool, output_dir: str) -> str:
    """'' when what each node saw of the others' probe files fits the layout asked for, else a one-line error.

    `seen[i]`: the nodes whose probe file node i found in `output_dir` (its own included).
    """
    everyone = set(range(len(seen)))
    if per_node_disks:
        sharing = [(i, sorted(s - {i})) for i, s in enumerate(seen) if s - {i}]
        if sharing:
            node, others = sharing[0]
            return (f"--save-on-each-node: --output-dir {output_dir} is shared between nodes (node {node} sees the "
                    f"files node {others[0]} writes there), so every node would write the same files; on a shared "
                    f"disk leave --save-on-each-node out.")
        return ""
    blind = [(i, sorted(everyone - s)) for i, s in enumerate(seen) if s != everyone]
    if blind:
        node, unseen = blind[0]
        return (f"--output-dir {output_dir} is not shared between the nodes (node {node} does not see the files node "
                f"{unseen[0]} writes there): with a disk per node, pass --save-on-each-node so that each node keeps "
                f"its own part of every checkpoint.")
    return ""


def check_disk_layout(output_dir: str, layout: NodeLayout, writes_here: bool) -> str:
    """Find out whether the nodes share `output_dir` (a probe file per node, each node lists what it sees) and
    return `disk_layout_problem` for the layout asked for; '' on one node. Collective: every rank calls it.
    `writes_here`: this process writes its node's files (the node's first process)."""
    if layout.num_nodes <= 1:
        return ""
    nonce = broadcast_from_main(uuid.uuid4().hex)
    probe = Path(output_dir) / f"{_PROBE_PREFIX}-{nonce}-node{layout.node}"
    if writes_here:
        os.makedirs(output_dir, exist_ok=True)
        probe.write_text(str(layout.node))
    barrier()
    seen = None
    if writes_here:
        prefix = f"{_PROBE_PREFIX}-{nonce}-node"
        seen = {int(p.name[len(prefix):]) for p in Path(output_dir).glob(f"{prefix}*") if p.name[len(prefix):].isdigit()}
    views = gather_lists([(layout.node, seen)])
    barrier()
    if writes_here:
        probe.unlink(missing_ok=True)
    by_node: dict[int, set[int]] = {}
    for node, view in views:
        if view is not None:
            by_node.setdefault(node, set()).update(view)
    return disk_layout_problem([by_node.get(i, {i}) for i in range(layout.num_nodes)], layout.per_node_disks,
                               output_dir)


# --- decisions over every node's view ---------------------------------------------------------------------------------

def node_view(output_dir: str) -> dict[int, str]:
    """This node's checkpoints of `output_dir` as `{step: problem}` ('' = its part is complete), without reading
    every byte (the agreed one is verified after). A part without a completion marker is incomplete: every node's
    part gets one, so its save did not finish there (transformers' file checks would take it)."""
    from .discover import list_checkpoints

    return {info.step: info.reason or ("" if info.marker else "no completion marker: its save did not finish")
            for info in list_checkpoints(output_dir) if info.step is not None}


def gather_node_views(view, layout: NodeLayout, writes_here: bool, group=None) -> list:
    """Every node's `view` (what its writing process passes), indexed by node. Collective (on `group` if given)."""
    gathered = gather_lists([(layout.node, view if writes_here else None)], group=group)
    views = [None] * layout.num_nodes
    for node, value in gathered:
        if value is not None:
            views[node] = value
    return views


def complete_on_every_node(views: list[dict[int, str]]) -> set[int]:
    """Steps whose part is complete ('' = no problem) in every node's view `{step: problem}`."""
    if not views:
        return set()
    common = {step for step, problem in views[0].items() if not problem}
    for view in views[1:]:
        common &= {step for step, problem in view.items() if not problem}
    return common


@dataclass
class ResumeAgreement:
    """Where every node resumes: `step` (None: from scratch), which nodes first pull their part of it from the
    mirror, and, when no step is complete everywhere, what is missing where (`missing`: one line per node)."""

    step: int | None
    pull: list[int]
    missing: list[str]
    skipped: list[str]


def agreed_resume_step(views: list[dict[int, str]], mirrored: list[set[int]] | None = None) -> ResumeAgreement:
    """The newest step every node can resume from: its part is complete on its disk, or on the mirror (it pulls it
    first). `views[i]`: node i's checkpoints as `{step: problem}` ('' = complete); `mirrored[i]`: the steps whose
    part of node i the mirror holds complete.

    No step complete everywhere while some node holds a complete part: no resume is agreed (`step` None) and
    `missing` says, for each node, what it lacks; training from scratch is then the user's call, never silent.
    """
    mirrored = mirrored or [set() for _ in views]
    available = [{s for s, problem in view.items() if not problem} | set(mirror)
                 for view, mirror in zip(views, mirrored)]
    common = set.intersection(*available) if available else set()
    if common:
        step = max(common)
        pull = [i for i, view in enumerate(views) if view.get(step, "missing") != ""]
        skipped = []
        for newer in sorted({s for a in available for s in a if s > step}, reverse=True):
            lacking = [f"node {i} ({_problem(views[i], newer)})" for i in range(len(views)) if newer not in available[i]]
            skipped.append(f"checkpoint-{newer}: not complete on {', '.join(lacking)}")
        return ResumeAgreement(step, pull, [], skipped)
    if not any(available):
        return ResumeAgreement(None, [], [], [])
    every_step = sorted({s for a in available for s in a} | {s for view in views for s in view})
    missing = []
    for i, have in enumerate(available):
        held = ", ".join(f"checkpoint-{s}" for s in sorted(have)) or "no complete checkpoint"
        lacking = "; ".join(f"checkpoint-{s}: {_problem(views[i], s)}" for s in every_step if s not in have)
        missing.append(f"node {i} has {held}" + (f"; lacks {lacking}" if lacking else ""))
    return ResumeAgreement(None, [], missing, [])


def _problem(view: dict[int, str], step: int) -> str:
    return view.get(step) or "its part is not on its disk"


def write_nodes_record(checkpoint: Path, views: list[dict[int, str]], step: int):
    """Record in a node's part of `checkpoint` which nodes held their part complete right after the save."""
    from .marker import write_json_atomically

    record = {"step": step, "num_nodes": len(views),
              "nodes": [{"node": i, "complete": view.get(step) == "", "problem": view.get(step, "no part on its disk")
                         or None} for i, view in enumerate(views)]}
    try:
        write_json_atomically(Path(checkpoint) / NODES_RECORD, record, durable=False)
    except OSError:
        pass
