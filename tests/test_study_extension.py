"""study.extend_learning_rates: the next rates beyond the grid's edge are added and run where the
learning rate that sets a batch size's point sits at that edge, until it is inside or the limit is
reached; a relaunch rebuilds the added runs from study.json and trains none twice."""

import json
import os
import shutil

import gin
import pytest

from experiments.launch import study as study_lib
from experiments.launch import study_extension
from tests.helpers import read_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_next_rate_keeps_the_ratio_of_the_two_rates_at_the_edge():
    assert study_extension.next_rate([0.01, 0.03, 0.1, 0.3], "high") == pytest.approx(0.9)
    assert study_extension.next_rate([0.01, 0.03, 0.1, 0.3], "low") == pytest.approx(0.003333)
    assert study_extension.next_rate([0.6, 0.8], "high") == 1.067  # 4 significant digits
    with pytest.raises(ValueError, match="2 or more"):
        study_extension.next_rate([0.1], "high")


def _summary(edges, tried):
    return {"edge_warnings": [{"batch_size": b, "learning_rate": lr, "edge": edge,
                               "decides": "steps to target"} for b, lr, edge in edges],
            "lrs_tried": tried}


def _state(rates_by_batch, extensions=()):
    runs = [{"name": f"b{b}_lr{lr:g}_s0", "hparams": {"batch_size": b, "learning_rate": lr}}
            for b, lrs in rates_by_batch.items() for lr in lrs]
    return {"runs": runs, "extensions": [{"batch_size": b, "learning_rate": lr}
                                         for b, lr in extensions]}


def test_plan_adds_one_rate_per_edge_and_stops_at_the_limit_or_a_tried_rate():
    summary = _summary([(8, 0.3, "high"), (64, 0.01, "low"), (512, 0.3, "high")],
                       {8: [0.1, 0.3], 32: [0.1, 0.3], 64: [0.01, 0.03], 512: [0.1, 0.3]})
    # B = 512: the rate beyond (0.9) has runs already (they failed, so it is not in lrs_tried)
    state = _state({8: [0.1, 0.3], 32: [0.1, 0.3], 64: [0.01, 0.03], 512: [0.1, 0.3, 0.9]})
    new, stops = study_extension.plan(summary, state, max_extensions=2)
    assert [(e["batch_size"], e["learning_rate"], e["edge"], e["from"], e["round"])
            for e in new] == [(8, 0.9, "high", 0.3, 1), (64, 0.003333, "low", 0.01, 1)]
    assert stops == {512: "tried"}
    # two rates already added at B = 8: the limit
    state = _state({8: [0.1, 0.3, 0.9, 2.7]}, extensions=[(8, 0.9), (8, 2.7)])
    new, stops = study_extension.plan(_summary([(8, 2.7, "high")], {8: [0.1, 0.3, 0.9, 2.7]}),
                                      state, max_extensions=2)
    assert new == [] and stops == {8: "limit"}


def test_the_switch_is_checked_and_is_not_part_of_the_study_identity():
    with gin.unlock_config():
        gin.bind_parameter("study.batch_sizes", [8, 16])
        gin.bind_parameter("study.rules", ["none", "linear"])
        gin.bind_parameter("study.reference_batch_size", 8)
        gin.bind_parameter("study.reference_learning_rate", 0.1)
        gin.bind_parameter("study.extend_learning_rates", True)
    with pytest.raises(study_lib.StudyError, match="needs study.learning_rates"):
        study_lib.study()
    gin.clear_config()
    with gin.unlock_config():
        gin.bind_parameter("study.batch_sizes", [8, 16])
        gin.bind_parameter("study.learning_rates", [0.1, 0.3])
        gin.bind_parameter("study.max_extensions", 0)
    with pytest.raises(study_lib.StudyError, match="study.max_extensions"):
        study_lib.study()
    on = study_lib.StudySpec(batch_sizes=(8,), learning_rates=(0.1, 0.3),
                             extend_learning_rates=True, max_extensions=5)
    off = study_lib.StudySpec(batch_sizes=(8,), learning_rates=(0.1, 0.3))
    assert on.axes() == off.axes()  # turning it on at a relaunch only adds runs


# The noisy quadratic model (exact expected steps in tests/test_nqm_testbed.py): at B = 64 the best
# constant rate is about 1.07 (22 updates), so the window [0.6, 0.8] has its best at the high edge
# and two rates beyond it (1.067, then 1.423, which misses the target) put the best inside. At
# B = 32 neither 1.6 nor 1.8 reaches the target in its 64 updates (the best final risk is at 1.6,
# the low edge), nor do 1.422 and 1.264: the limit of 2 added rates is reached at the low edge.
EDGE_STUDY = """include 'gin/studies/nqm_known_answer.gin'
train.verbose = 0
study.batch_sizes = [32, 64]
study.learning_rates_by_batch_size = {32: [1.6, 1.8], 64: [0.6, 0.8]}
study.extend_learning_rates = True
"""


def _launch(gin_file, output):
    from experiments import launch
    return launch.launch([gin_file], [], output_dir=str(output), print_fn=lambda *_: None,
                         run_name="r")


@pytest.mark.slow
def test_edge_rates_are_extended_until_inside_or_the_limit_and_relaunches_redo_nothing(
        tmp_path):
    gin_file = tmp_path / "edge.gin"
    gin_file.write_text(EDGE_STUDY)
    output = tmp_path / "runs"
    first = _launch(str(gin_file), output)
    study_dir = first["study_dir"]
    state = read_json(os.path.join(study_dir, "study.json"))
    added = [(e["batch_size"], e["learning_rate"], e["edge"], e["round"])
             for e in state["extensions"]]
    assert sorted(added) == [(32, 1.264, "low", 2), (32, 1.422, "low", 1),
                             (64, 1.067, "high", 1), (64, 1.423, "high", 2)]
    assert state["extension_settings"]["stopped"] == {"32": "limit"}
    assert {r["status"] for r in state["runs"]} == {"finished"} and len(state["runs"]) == 8
    assert sorted(o.name for o in first["outcomes"]) == sorted(r["name"] for r in state["runs"])

    report = read_json(os.path.join(study_dir, "report.json"))
    assert report["per_batch_size"]["64"]["learning_rate"] == 1.067
    assert report["per_batch_size"]["64"]["at_edge"] is None
    assert [(e["batch_size"], e["edge"]) for e in report["edge_warnings"]] == [(32, "low")]
    assert len(report["extensions"]["added"]) == 4
    text = open(os.path.join(study_dir, "report.md"), encoding="utf-8").read()
    assert "4 learning rate(s) added beyond the grid's edge" in text
    assert "B = 64: high edge at 0.8, added 1.067, 1.423; best 1.067, now inside" in text
    assert "the limit study.max_extensions = 2 was reached" in text

    # a relaunch trains nothing: every run, the added ones included, is finished
    kept = os.path.join(study_dir, "b64_lr1.067_s0", "result.json")
    before = os.path.getmtime(kept)
    again = _launch(str(gin_file), output)
    assert again["outcomes"] == [] and os.path.getmtime(kept) == before
    # an added run lost (as if the launch died before it ran) is rebuilt from study.json
    shutil.rmtree(os.path.join(study_dir, "b64_lr1.423_s0"))
    third = _launch(str(gin_file), output)
    assert [o.name for o in third["outcomes"]] == ["b64_lr1.423_s0"]
    state = read_json(os.path.join(study_dir, "study.json"))
    assert len(state["extensions"]) == 4 and len(state["runs"]) == 8
    with open(os.path.join(study_dir, "report.json")) as handle:
        assert json.load(handle)["per_batch_size"]["64"]["learning_rate"] == 1.067


def test_a_sharded_launch_says_how_to_extend():
    """A sharded launch never extends; its report said only "not extended", which reads as if
    the extension had run and found nothing to add (docs/cluster.md's recipe uses a study that
    extends). It now says what to do."""
    from experiments.analysis import answers
    from experiments.launch import study as study_lib

    spec = study_lib.StudySpec(batch_sizes=[64], learning_rates=[0.03, 0.1],
                               extend_learning_rates=True)
    info = study_extension.report_info({"extension_settings": study_extension.settings(
        spec, held="shard")})
    summary = {"extensions": info, "edge_warnings": [{"batch_size": 64, "edge": "high",
                                                      "learning_rate": 0.1}],
               "best": {}, "per_batch": {}}
    sentence = answers._extension_sentence(summary)
    assert "B = 64 (not extended under --shard: once every shard is done, relaunch without " \
           "--shard (the same --run_name) to extend)" in sentence


@pytest.mark.slow
def test_shards_hold_the_extension_and_the_relaunch_without_shard_extends(tmp_path):
    """docs/cluster.md's recipe for a study that extends: the shards, then the same command
    without --shard, which extends the grid and writes the report."""
    from experiments import launch

    gin_file = tmp_path / "edge.gin"
    gin_file.write_text(EDGE_STUDY)
    output = tmp_path / "runs"
    for shard in ("0/2", "1/2"):
        out = launch.launch([str(gin_file)], [], output_dir=str(output),
                            print_fn=lambda *_: None, run_name="r", shard=shard)
    study_dir = out["study_dir"]
    state = read_json(os.path.join(study_dir, "study.json"))
    assert state["extension_settings"]["held"] == "shard" and not state.get("extensions")
    text = open(os.path.join(study_dir, "report.md"), encoding="utf-8").read()
    assert "not extended under --shard" in text
    again = _launch(str(gin_file), output)
    assert sorted(o.name for o in again["outcomes"]) == [
        "b32_lr1.264_s0", "b32_lr1.422_s0", "b64_lr1.067_s0", "b64_lr1.423_s0"]
    state = read_json(os.path.join(study_dir, "study.json"))
    assert state["extension_settings"]["held"] is None and len(state["extensions"]) == 4


def test_turning_the_extension_on_at_a_relaunch_is_not_another_configuration():
    """docs/studies.md: turning the switch on (or raising the limit) on a relaunch of a finished
    study only adds runs; the relaunch was refused as "a study launched with another
    configuration" (and each interrupted run's own check would refuse it the same way)."""
    from experiments.run import run_dir

    before = "study.batch_sizes = [64]\nstudy.target = 0.3\ntrain.epochs = 1\n"
    after = before + "study.extend_learning_rates = True\nstudy.max_extensions = 4\n"
    assert run_dir.config_difference(before, after) is None
    assert run_dir.config_difference(before, before.replace("0.3", "0.4")) is not None


def test_a_launch_does_not_wait_for_a_run_its_own_process_holds(tmp_path):
    """A run whose 'running' status this very process wrote (its slot here ended without
    recording the end, e.g. on a full disk) can end in no other process: waiting for it
    would never end."""
    import types

    from experiments.launch import study_launch
    from experiments.run import run_dir

    (tmp_path / "b64_s0").mkdir()
    run_dir.write_json(str(tmp_path / "b64_s0"), "status.json", run_dir.running_status())
    runs = [types.SimpleNamespace(name="b64_s0")]
    assert study_launch._wait_for_live(str(tmp_path), runs, print) == []
