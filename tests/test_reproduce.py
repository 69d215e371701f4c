"""reproduce.py on a tiny setting: the plan's stages, the initial weights it writes, results.json and the report
from it, resuming an interrupted run (finished stages skipped, an unrecorded training resumed, not retrained),
and a rerun with another plan refused."""

import json
import re
import sys

import pytest
import torch
from train_utils import REPO, make_image_folder

from matmamba_vision.elastic import extract_submodel
from matmamba_vision.reproduction import Plan, PlanMismatch, Runners, StageLog, reproduce
from matmamba_vision.reproduction.report import load_results
from matmamba_vision.reproduction.stages import Stage, final_weights
from matmamba_vision.training import main as train_main
from matmamba_vision.weights import build_model, load_weights

sys.path.insert(0, str(REPO))
import reproduce as reproduce_script  # noqa: E402  (the repository's scripts)
import retrieval  # noqa: E402
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


def _plan(tmp_path, data, **kw):
    kw = dict(dict(seeds=[0, 1], variants=["distill"], commit="abc"), **kw)
    return Plan(tmp_path / "run", train_args=TRAIN, data_args=["--data-dir", str(data)], **kw)


def test_plan_stages_and_initial_weights(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4)
    plan = _plan(tmp_path, data, seeds=[0, 1, 2], variants=["distill", "sample"])
    stages = plan.stages()
    # per seed: nested, 2 variants, 2 x 2 baselines, each trained and validated; then 3 retrievals per seed
    assert len(stages) == 3 * 2 * 7 + 3 * 3 and len({s.name for s in stages}) == len(stages)
    assert plan.tokens == plan.patches + 1 and plan.levels == [32, 8]
    assert plan.null_partner(0) == 1 and plan.null_partner(2) == 0
    nested = load_weights(plan.write_init("nested-s0"))
    same = load_weights(plan.write_init("baseline-same-g8-s0"))
    own = load_weights(plan.write_init("baseline-own-g8-s0"))
    model = build_model(plan.model_name, **plan.model_kwargs)
    model.load_state_dict(nested)
    want = extract_submodel(model, 8).state_dict()
    assert same.keys() == want.keys() and all(torch.equal(same[k], want[k]) for k in want)  # sliced, exactly
    assert not torch.equal(own["patch_embed.proj.weight"], nested["patch_embed.proj.weight"])  # its own init
    assert not torch.equal(own["pos_embed"], nested["pos_embed"])
    plan.init_path("baseline-own-g8-s0").unlink()
    again = load_weights(plan.write_init("baseline-own-g8-s0"))
    assert again.keys() == own.keys() and all(torch.equal(again[k], own[k]) for k in own)  # deterministic
    argv = plan.train_argv("baseline-same-g8-s0")
    for needle in ("--initial-checkpoint", "minitrain", "minival", "mixer_dims: [8, 8]"):
        assert needle in " ".join(argv), needle
    assert argv[argv.index("--seed") + 1] == "0"  # the nested model's data order
    with pytest.raises(ValueError, match="variants"):
        _plan(tmp_path, data, variants=["nope"])


def test_eta_from_finished_stages(tmp_path):
    log = StageLog(tmp_path, {"model": "m"})
    stages = [
        Stage("train", "nested-s1"),
        Stage("train", "nested-distill-s1"),
        Stage("train", "baseline-own-g8-s0"),
        Stage("validate", "nested-s0"),
    ]
    assert log.eta(stages) == (None, 4)
    log.done = {"train nested-s0": {"seconds": 100.0}, "validate baseline-own-g16-s0": {"seconds": 4.0}}
    # same cost key; then same verb and kind; a baseline's training is not guessed from the nested model's
    assert log.eta(stages) == (pytest.approx(100.0 + 100.0), 2)
    log.done["train baseline-same-g8-s0"] = {"seconds": 30.0}
    log.done["validate nested-s1"] = {"seconds": 6.0}
    assert log.eta(stages) == (pytest.approx(100.0 + 100.0 + 30.0 + 6.0), 0)


def test_interrupted_reproduction_resumes_and_refuses_another_plan(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=4)
    plan = _plan(tmp_path, data)
    calls = []
    first = Runners(
        counting(calls, "train", train_main),
        counting(calls, "validate", validate.main, fail_on=lambda a: "--mixnmatch" in a),
        counting(calls, "retrieval", retrieval.main),
    )
    with pytest.raises(Interrupt):  # stopped at the nested model's evaluation, after the seed's trainings
        reproduce(plan, first, command="first")
    done = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert len(done["stages"]) == 6 and all(k.startswith("train ") for k in done["stages"])
    out = capsys.readouterr().out
    # seed 1's trainings are costed from seed 0's; no evaluation has run yet, so those are counted apart
    eta = r"\(ETA of the run: \d+ (s|min) \+ 16 stages not yet timed\)"
    assert re.search(r"stage 7 of 28: validate nested-s0: running " + eta, out)
    assert not (tmp_path / "run" / "REPRODUCTION.md").exists()
    # a training that finished but was not recorded (killed just before the record): resumed, not redone
    del done["stages"]["train nested-s0"]
    (tmp_path / "run" / "stages.json").write_text(json.dumps(done))
    weights = final_weights(plan.exp_dir("nested-s0"))
    before = weights.read_bytes()

    # another plan in the same folder: refused, naming the difference
    with pytest.raises(PlanMismatch, match=r"seeds: \[0, 1\] there, \[0\] now"):
        reproduce(_plan(tmp_path, data, seeds=[0]), first)
    with pytest.raises(PlanMismatch, match="commit"):
        reproduce(_plan(tmp_path, data, commit="def"), first)

    calls.clear()
    second = Runners(
        counting(calls, "train", train_main),
        counting(calls, "validate", validate.main),
        counting(calls, "retrieval", retrieval.main),
    )
    report = reproduce(_plan(tmp_path, data), second, command="second")
    trains = [a for name, a in calls if name == "train"]
    assert "--resume" in trains[0] and "nested-s0" in trains[0]
    assert weights.read_bytes() == before  # continued after its last epoch: nothing retrained
    assert [n for n, _ in calls].count("validate") == 12 and [n for n, _ in calls].count("retrieval") == 4
    results = load_results(tmp_path / "run" / "results.json")
    assert results["commands"] == ["first", "second"] and results["plan"]["tokens"] == plan.tokens
    assert results["plan"]["holdout"]["val_split"] == "minival"
    assert len(results["models"]) == 12 and len(results["stages"]) == 28
    rows = results["retrieval"]
    null = [r for r in rows if r["query_model"] == "nested-s1" and r["db_model"] == "nested-s0"]
    own_db = [r for r in rows if r["query_model"] == r["db_model"] == "baseline-own-g8-s1"]
    assert sorted(r["query_width"] for r in null) == [8, 32] and len(own_db) == 1
    assert {r["query_model"] for r in rows if r["db_model"] == "nested-distill-s0"} == {"nested-distill-s0"}
    nested0 = next(m for m in results["models"] if m["name"] == "nested-s0")
    assert set(nested0["test"]["uniform"]) == {str(g) for g in plan.widths} and nested0["test"]["mixnmatch"]
    assert set(nested0["minival"]) == {"32", "8"}
    assert report.is_file() and (tmp_path / "run" / "fig3_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # the report regenerates from results.json alone
    text = report.read_text()
    out = reproduce_script.main(
        ["--report-from", str(tmp_path / "run" / "results.json"), "--output", str(tmp_path / "re")]
    )
    assert out.read_text() == text
    # finished: a third call trains and evaluates nothing
    calls.clear()
    reproduce(_plan(tmp_path, data), second)
    assert calls == []
