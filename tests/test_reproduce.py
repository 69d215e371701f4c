"""reproduce.py on a tiny setting: the report is written, an interrupted run continues where it stopped (finished
stages skipped, an unrecorded training resumed from its checkpoint, not retrained)."""

import json
import sys

import pytest
from train_utils import REPO, make_image_folder

from matmamba_vision.reproduction import Plan, Runners, reproduce
from matmamba_vision.reproduction.stages import final_weights
from matmamba_vision.training import main as train_main

sys.path.insert(0, str(REPO))
import retrieval  # noqa: E402  (the repository's scripts)
import validate  # noqa: E402

TRAIN = [
    "--model-kwargs",
    "{embed_dim: 32, depth: 2, d_state: 8, headdim: 4}",
    "--granularities",
    "32",
    "8",
    "-b",
    "4",
    "--epochs",
    "1",
    "--threads",
    "1",
]


class Interrupt(Exception):
    pass


def counting(calls, name, fn, fail_on=None):
    def run(argv):
        calls.append((name, argv))
        if fail_on is not None and fail_on(argv):
            raise Interrupt(name)
        return fn(argv)

    return run


def test_interrupted_reproduction_resumes(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4)
    plan = Plan(tmp_path / "run", train_args=TRAIN, data_args=["--data-dir", str(data)])
    assert plan.levels == [32, 8] and plan.widths == list(range(8, 33, 2))
    calls = []
    first = Runners(
        counting(calls, "train", train_main),
        counting(calls, "validate", validate.main, fail_on=lambda a: "--mixnmatch" in a),
        counting(calls, "retrieval", retrieval.main),
    )
    with pytest.raises(Interrupt):  # stopped at the nested model's evaluation, after the three trainings
        reproduce(plan, first, seeds=[0], threshold=0.0)
    done = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert sorted(done) == ["train baseline-g32-s0", "train baseline-g8-s0", "train nested-s0"]
    assert not (tmp_path / "run" / "REPRODUCTION.md").exists()
    # a training that finished but was not recorded (killed just before the record): resumed, not redone
    del done["train nested-s0"]
    (tmp_path / "run" / "stages.json").write_text(json.dumps(done))
    weights = final_weights(plan.exp_dir("nested-s0"))
    before = weights.read_bytes()
    baseline_argv = plan.baseline_train_argv(8, 0)
    assert "--resume" in baseline_argv and "mixer_dims: [8, 8]" in " ".join(baseline_argv)

    calls.clear()
    second = Runners(
        counting(calls, "train", train_main),
        counting(calls, "validate", validate.main),
        counting(calls, "retrieval", retrieval.main),
    )
    report = reproduce(
        Plan(tmp_path / "run", train_args=TRAIN, data_args=["--data-dir", str(data)]), second, seeds=[0], threshold=0.0
    )
    trains = [a for name, a in calls if name == "train"]
    assert len(trains) == 1 and "--resume" in trains[0] and "nested-s0" in trains[0]
    assert weights.read_bytes() == before  # continued after its last epoch: nothing retrained
    assert [name for name, _ in calls].count("validate") == 3 and [n for n, _ in calls].count("retrieval") == 1
    text = report.read_text()
    for needle in ("## Fig. 3", "## Fig. 5", "D/4 |", "baseline queries", "Seeds: [0]", "untrained widths"):
        assert needle in text, needle
    for png in ("fig3_accuracy.png", "fig5_retrieval.png"):
        assert (tmp_path / "run" / png).read_bytes()[:4] == b"\x89PNG"
    # finished: a third call trains and evaluates nothing, and rewrites the same tables
    calls.clear()
    reproduce(
        Plan(tmp_path / "run", train_args=TRAIN, data_args=["--data-dir", str(data)]), second, seeds=[0], threshold=0.0
    )
    assert calls == []
