"""The multi-node decisions as pure functions over every node's view (the two-node runs are in
tests/distributed/test_multinode.py): where to resume, what rotation may delete, whether the disk layout fits."""

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hf_trainkit.checkpointing.integrity import required_files
from hf_trainkit.checkpointing.marker import write_deepspeed_latest
from hf_trainkit.checkpointing.nodes import (NodeLayout, agreed_resume_step, complete_on_every_node,
                                             disk_layout_problem)
from hf_trainkit.checkpointing.rotate import checkpoints_to_delete, counting_only_complete_everywhere
from hf_trainkit.checkpointing.validate import CheckpointInfo


def test_resume_takes_the_newest_step_complete_on_every_node():
    views = [{2: "", 4: "", 6: ""}, {2: "", 4: "", 6: "model.safetensors is missing"}]
    agreement = agreed_resume_step(views)
    assert agreement.step == 4 and agreement.pull == [] and agreement.missing == []
    assert agreement.skipped == ["checkpoint-6: not complete on node 1 (model.safetensors is missing)"]


def test_a_node_lacking_its_part_pulls_it_from_the_mirror():
    agreement = agreed_resume_step([{2: "", 4: ""}, {}], mirrored=[set(), {2, 4}])
    assert (agreement.step, agreement.pull) == (4, [1])
    # The mirror of node 1 stops at 2: only 2 is everywhere.
    assert agreed_resume_step([{2: "", 4: ""}, {}], mirrored=[set(), {2}]).step == 2


def test_no_step_everywhere_is_never_a_silent_start_from_scratch():
    agreement = agreed_resume_step([{2: ""}, {4: "", 2: "rng_state_1.pth is missing"}])
    assert agreement.step is None
    assert agreement.missing == ["node 0 has checkpoint-2; lacks checkpoint-4: its part is not on its disk",
                                 "node 1 has checkpoint-4; lacks checkpoint-2: rng_state_1.pth is missing"]
    # A wiped node and no mirror: the other node's checkpoints are not thrown away silently either.
    assert agreed_resume_step([{2: ""}, {}]).missing == [
        "node 0 has checkpoint-2", "node 1 has no complete checkpoint; lacks checkpoint-2: its part is not on its disk"]
    # Nothing complete anywhere: a first run (or only cut-short saves) starts from scratch without a word.
    assert agreed_resume_step([{}, {}]) == agreed_resume_step([{2: "no marker"}, {}])
    assert agreed_resume_step([{}, {}]).step is None and agreed_resume_step([{}, {}]).missing == []


views_strategy = st.lists(st.dictionaries(st.integers(1, 8), st.sampled_from(["", "", "cut short"]), max_size=6),
                          min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(views=views_strategy, data=st.data())
def test_agreed_step_matches_a_brute_force_search(views, data):
    mirrored = [data.draw(st.sets(st.integers(1, 8), max_size=3)) for _ in views]
    agreement = agreed_resume_step(views, mirrored)
    usable = [{s for s in range(1, 9) if view.get(s) == "" or s in mirror} for view, mirror in zip(views, mirrored)]
    everywhere = [s for s in range(1, 9) if all(s in u for u in usable)]
    assert agreement.step == (max(everywhere) if everywhere else None)
    if agreement.step is not None:
        assert agreement.pull == [i for i, view in enumerate(views) if view.get(agreement.step) != ""]
    assert bool(agreement.missing) == (not everywhere and any(usable))


def test_complete_on_every_node():
    assert complete_on_every_node([{2: "", 4: "", 6: ""}, {2: "", 4: "x", 6: ""}, {6: "", 2: ""}]) == {2, 6}
    assert complete_on_every_node([]) == set()


def info(step: int, valid: bool = True) -> CheckpointInfo:
    return CheckpointInfo(path=Path(f"/run/checkpoint-{step}"), step=step, valid=valid)


def test_rotation_deletes_a_step_only_when_every_node_has_a_newer_complete_one():
    # This node holds 2, 4 and 6 complete; the other node has not completed 6 (it is still writing, or died).
    here = [info(2), info(4), info(6)]
    counted = counting_only_complete_everywhere(here, complete_everywhere={2, 4})
    deleted = [c.step for c in checkpoints_to_delete(counted, save_total_limit=1)]
    assert deleted == [2]  # 4 is the newest step complete everywhere; 6 is newer and stays
    assert [c.step for c in checkpoints_to_delete(here, save_total_limit=1)] == [2, 4]  # one node's view alone


def test_disk_layout_problem():
    assert disk_layout_problem([{0, 1}, {0, 1}], per_node_disks=False, output_dir="out") == ""
    assert disk_layout_problem([{0}, {1}], per_node_disks=True, output_dir="out") == ""
    shared_asked = disk_layout_problem([{0}, {1}], per_node_disks=False, output_dir="out")
    assert shared_asked.startswith("--output-dir out is not shared between the nodes (node 0 does not see the files "
                                   "node 1 writes there)") and "--save-on-each-node" in shared_asked
    per_node_asked = disk_layout_problem([{0, 1}, {0, 1}], per_node_disks=True, output_dir="out")
    assert per_node_asked.startswith("--save-on-each-node: --output-dir out is shared between nodes (node 0 sees the "
                                     "files node 1 writes there)")
    # Three nodes, two of which share a disk: neither layout fits.
    assert disk_layout_problem([{0, 1}, {0, 1}, {2}], per_node_disks=True, output_dir="out")
    assert disk_layout_problem([{0, 1}, {0, 1}, {2}], per_node_disks=False, output_dir="out")
    assert "\n" not in shared_asked + per_node_asked


def test_a_nodes_part_needs_only_its_ranks_files():
    node1 = {"trainer_state.json", "latest", "global_step4/zero_pp_rank_1_mp_rank_00_model_states.pt",
             "global_step4/zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng_state_1.pth"}
    assert required_files("unused", node1, world_size=2, ranks=[1])[1] == []
    assert required_files("unused", node1, world_size=2)[1] == ["DeepSpeed optimizer shards (1 of 2)",
                                                                "rng_state_0.pth"]
    assert required_files("unused", node1 - {"rng_state_1.pth"}, world_size=2, ranks=[1])[1] == ["rng_state_1.pth"]


def test_latest_is_written_where_deepspeed_left_it_out(tmp_path):
    (tmp_path / "global_step4").mkdir()
    assert write_deepspeed_latest(tmp_path) and (tmp_path / "latest").read_text() == "global_step4"
    (tmp_path / "latest").write_text("global_step3")
    assert not write_deepspeed_latest(tmp_path) and (tmp_path / "latest").read_text() == "global_step3"


def test_node_layout_marker_fields():
    layout = NodeLayout(node=1, ranks=((0, 1), (2, 3)), per_node_disks=True)
    assert layout.views_differ and layout.ranks_here == (2, 3)
    assert layout.marker_fields() == {"node": {"rank": 1, "num_nodes": 2, "ranks": [2, 3]}}
    assert NodeLayout(node=1, ranks=((0, 1), (2, 3))).marker_fields() == {}
    assert not NodeLayout(per_node_disks=True).views_differ
