"""Issue 29: measured latency per configuration (validate.py --latency), its cache, selection under a budget,
and export.py --from-results. Stored timings are made up; no test asserts how fast anything runs."""

import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from eval_synthetic import tiny_model
from test_eval_scripts import TINY, _folder
from train_utils import load_script

import matmamba_vision as mv
from matmamba_vision.evaluation import latency as lat
from matmamba_vision.evaluation import latency_cache, official_sweep, parse_granularities
from matmamba_vision.evaluation.latency import LatencyCache, latency_key, measure_latency
from matmamba_vision.selection import NoSubmodelFitsError, budget_check, load_results
from matmamba_vision.weights import save_weights

ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript", "onnxruntime"))


def _row(name, dims, top1, ms, mb, params):
    return dict(name=name, dims=dims, top1=top1, latency_ms=ms, latency_p90_ms=ms * 1.1, memory_mb=mb, params=params)


ROWS = [
    _row("g=32", [32, 32], 90.0, 8.0, 40.0, 4000),
    _row("32x1+16x1", [32, 16], 88.0, 6.0, 30.0, 3000),
    _row("g=16", [16, 16], 85.0, 5.0, 25.0, 2500),
    _row("32x1+8x1", [32, 8], 85.0, 4.5, 28.0, 2600),  # as accurate as g=16 and faster
    _row("g=8", [8, 8], 70.0, 3.0, 20.0, 2000),
]
META = dict(model="matmamba_vision_tiny_patch4_28", latency=dict(machine="CPU X", runtime="eager", batch=1, threads=2))


def test_the_most_accurate_configuration_within_the_budget_is_chosen():
    results = dict(META, rows=ROWS)
    assert mv.select_submodel(results).name == "g=32"  # no budget: the most accurate
    assert mv.select_submodel(results, max_ms=8.0).name == "g=32"  # the limit itself fits
    assert mv.select_submodel(results, max_ms=7.9).name == "32x1+16x1"
    choice = mv.select_submodel(results, max_ms=5.5)
    assert choice.name == "32x1+8x1" and choice.dims == [32, 8]  # the tie goes to the faster one
    assert choice.latency_ms == 4.5 and choice.meta["latency"]["machine"] == "CPU X"
    assert mv.select_submodel(results, max_memory_mb=27.0).name == "g=16"
    assert mv.select_submodel(results, max_params=2999).name == "32x1+8x1"
    assert mv.select_submodel(results, max_ms=5.5, max_memory_mb=26.0).name == "g=16"
    assert mv.select_submodel(ROWS, max_ms=3.5, metric="top1").name == "g=8"  # rows alone


def test_selection_reads_validate_files(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps(dict(META, rows=ROWS)))
    assert mv.select_submodel(path, max_ms=6).name == "32x1+16x1"
    csv_path = tmp_path / "v.csv"
    lines = ["name,dims,top1,latency_ms,latency_p90_ms,memory_mb,params"]
    lines += [
        f"{r['name']},{' '.join(map(str, r['dims']))},{r['top1']},{r['latency_ms']},,{r['memory_mb']},{r['params']}"
        for r in ROWS
    ]
    csv_path.write_text("\n".join(lines) + "\n")
    rows, meta = load_results(csv_path)
    assert rows[3]["dims"] == [32, 8] and rows[3]["latency_p90_ms"] is None and meta == {}
    assert mv.select_submodel(str(csv_path), max_ms=5.5).dims == [32, 8]


def test_none_fits_says_so_and_names_the_fastest():
    with pytest.raises(NoSubmodelFitsError) as e:
        mv.select_submodel(dict(META, rows=ROWS), max_ms=2.0)
    msg = str(e.value)
    assert "no configuration of 5 fits the budget max_ms=2" in msg and "measured on CPU X, eager, batch 1" in msg
    assert "the fastest is g=8 at 3 ms" in msg and isinstance(e.value, ValueError)
    with pytest.raises(NoSubmodelFitsError, match="the fastest is g=8"):
        mv.select_submodel(dict(META, rows=ROWS), max_ms=100, max_memory_mb=1)


def test_bad_budgets_and_results_are_refused():
    with pytest.raises(ValueError, match="max_ms must be a positive finite number, got -1"):
        mv.select_submodel(ROWS, max_ms=-1)
    with pytest.raises(ValueError, match="max_params must be a positive finite number"):
        mv.select_submodel(ROWS, max_params=float("nan"))
    no_latency = [{k: v for k, v in r.items() if not k.startswith(("latency", "memory"))} for r in ROWS]
    with pytest.raises(ValueError, match=r"max_ms: the results hold no measured latency_ms .*validate.py --latency"):
        mv.select_submodel(no_latency, max_ms=5)
    assert mv.select_submodel(no_latency, max_params=2600).name == "g=16"  # no timings: the tie goes to the smaller
    with pytest.raises(NoSubmodelFitsError, match="the smallest is g=8"):
        mv.select_submodel(no_latency, max_params=10)
    with pytest.raises(ValueError, match="no such file"):
        mv.select_submodel("/nonexistent/validate.json")
    with pytest.raises(ValueError, match="holds no result rows"):
        mv.select_submodel({"rows": []})


def test_a_p90_budget_leaves_a_margin_in_the_choice_and_in_the_check():
    results = dict(META, rows=ROWS)  # p90 = 1.1 x median
    assert mv.select_submodel(results, max_ms=6.0).name == "32x1+16x1"  # median 6.0
    choice = mv.select_submodel(results, max_ms=6.0, latency="p90")
    assert choice.name == "32x1+8x1" and choice.budget["latency"] == "p90"  # p90 4.95; 32x1+16x1's is 6.6
    with pytest.raises(NoSubmodelFitsError, match=r"max_ms=3.2 \(p90 latency\)"):
        mv.select_submodel(results, max_ms=3.2, latency="p90")  # g=8: median 3.0, p90 3.3
    with pytest.raises(ValueError, match=r"latency must be one of \['median', 'p90'\], got 'p99'"):
        mv.select_submodel(results, max_ms=6.0, latency="p99")
    retimed = dict(median_ms=4.8, p90_ms=5.2, memory_mb=None)
    assert budget_check(retimed, dict(max_ms=5.0, latency="median"))["meets_budget"]
    miss = budget_check(retimed, dict(max_ms=5.0, latency="p90"))
    assert miss["misses"] == ["max_ms=5 (p90): measured 5.2 ms"]


def test_budget_check_names_the_miss():
    ok = budget_check(dict(median_ms=4.0, memory_mb=10.0), dict(max_ms=5.0, max_memory_mb=None, max_params=None))
    assert ok["meets_budget"] and ok["misses"] == [] and ok["budget"]["max_ms"] == 5.0
    miss = budget_check(dict(median_ms=6.25, memory_mb=None), dict(max_ms=5.0, max_memory_mb=8.0, max_params=100), 50)
    assert not miss["meets_budget"]
    assert miss["misses"] == ["max_ms=5 (median): measured 6.25 ms", "max_memory_mb=8: not measurable here"]


@pytest.fixture(scope="module")
def model():
    return tiny_model(depth=2)


def test_cache_key_refuses_timings_from_another_machine_or_runtime(model, tmp_path, monkeypatch):
    cache = LatencyCache(tmp_path / "latency.json")
    configs = parse_granularities(model, ["32", "8"])
    key, first = measure_latency(model, configs, repeats=2, warmup=0, cache=cache, progress=False)
    assert set(first) == {(32, 32), (8, 8)} and not any(r["cached"] for r in first.values())
    assert all(r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["repeats"] == 2 for r in first.values())
    assert key["runtime"] == "eager" and key["batch"] == 1 and key["img_size"] == [28, 28]
    _, again = measure_latency(model, configs, repeats=2, warmup=0, cache=cache, progress=False)
    assert all(r["cached"] for r in again.values())
    assert again[(8, 8)]["median_ms"] == first[(8, 8)]["median_ms"]
    # another runtime, thread count or batch: not served
    assert cache.lookup(latency_key(model, "compile", 1)) == {}
    assert cache.lookup(dict(key, threads=key["threads"] + 1)) == {}
    assert cache.lookup(latency_key(model, "eager", 2)) == {}
    # another machine: refused, and said why; measured anew and stored beside the first entry
    monkeypatch.setattr(latency_cache, "machine_name", lambda device="cpu": "Another CPU @ 1.00GHz")
    other = latency_key(model, "eager", 1)
    assert cache.lookup(other) == {}
    assert any("machine: " in why and "Another CPU" in why for why in cache.refused(other))
    _, there = measure_latency(model, configs[:1], repeats=1, warmup=0, cache=cache, progress=False)
    assert not there[(32, 32)]["cached"]
    assert len(json.loads(cache.path.read_text())["entries"]) == 2


@pytest.mark.parametrize("settle", [0, 1])
def test_a_kept_configuration_is_called_untimed_before_each_timed_call(settle, monkeypatch):
    calls = []  # the configuration of every call, in order
    # no working memory, so both stay kept whatever the process's resident set does meanwhile
    monkeypatch.setattr(lat, "_peak_growth", lambda call, device: call() or 0)

    def make(dims):
        return lat._Runner(lambda: calls.append(dims), 4)

    a, b = (32, 32), (8, 8)
    kw = dict(repeats=3, warmup=1, settle=settle, memory_first=True, device=torch.device("cpu"), progress=False)
    times, memory = lat._time_rounds([a, b], make, live_bytes=8, **kw)
    assert {d: len(t) for d, t in times.items()} == {a: 3, b: 3} and set(memory) == {a, b}
    built = [a, a, a, b, b, b]  # round 0: the memory call, the warm-up and the timed call of each
    assert calls == built + [b] * (1 + settle) + [a] * (1 + settle) + [a] * (1 + settle) + [b] * (1 + settle)
    assert lat.default_settle("onnxruntime") == 1 and lat.default_settle("eager") == 0
    calls.clear()  # rebuilt at each visit (nothing kept): warmed up again, and no untimed call more
    lat._time_rounds([a, b], make, live_bytes=0, **dict(kw, repeats=2))
    assert calls == built + [b, b, a, a]


@pytest.mark.parametrize("memory_first, rebuilt", [(True, 2), (False, 0)])
def test_a_kept_onnx_session_counts_its_arena_against_the_live_budget(monkeypatch, memory_first, rebuilt):
    """ORT's arena stays with its session: 24 kept 35M sessions at batch 32 held 23 GB and were OOM-killed."""
    built = []

    def make(dims):
        built.append(dims)
        return lat._Runner(lambda: None, 4)

    monkeypatch.setattr(lat, "_peak_growth", lambda call, device: call() or 100)  # each call's working memory
    a, b = (32, 32), (8, 8)
    kw = dict(repeats=3, warmup=0, settle=0, device=torch.device("cpu"), progress=False)
    _, memory = lat._time_rounds([a, b], make, live_bytes=150, memory_first=memory_first, **kw)
    assert memory == {a: 104, b: 104}
    # with its arena (104 bytes) only the first fits in 150: the second is rebuilt at each of its later visits
    assert len(built) == 2 + rebuilt


def test_settle_is_part_of_the_key(model):
    assert latency_key(model, "onnxruntime", 1)["settle"] == 1
    assert "settle" not in latency_key(model, "onnxruntime", 1, settle=0)  # as ORT timings were keyed before
    assert latency_key(model, "eager", 1, settle=2)["settle"] == 2
    assert latency_key(model, "eager", 1) == latency_key(model, "eager", 1, settle=0)
    with pytest.raises(ValueError, match="settle must be an integer >= 0"):
        latency_key(model, "eager", 1, settle=-1)


def test_measure_latency_checks_its_arguments(model):
    configs = parse_granularities(model, None)
    with pytest.raises(ValueError, match="runtime must be one of"):
        measure_latency(model, configs, runtime="tensorrt")
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        measure_latency(model, configs, batch=0)
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        measure_latency(model, configs, repeats=0)
    with pytest.raises(ValueError, match="configs: nothing to time"):
        measure_latency(model, [])


def test_memory_is_weights_plus_working_memory(model):
    configs = parse_granularities(model, ["32", "16"])
    _, res = measure_latency(model, configs, repeats=2, warmup=1, live_bytes=0, progress=False)  # rebuilt per visit
    assert all(r["repeats"] == 2 for r in res.values())
    mb = res[(32, 32)]["memory_mb"]
    if mb is None:
        pytest.skip("/proc/self/clear_refs is not available here")
    weights = mv.count_params(model) * 4 / 2**20
    assert mb >= weights


def test_validate_latency_writes_timings_beside_accuracy(tmp_path, monkeypatch):
    validate = load_script("validate")
    live, measure = [], lat.measure_latency
    monkeypatch.setattr(lat, "measure_latency", lambda *a, **kw: live.append(kw["live_bytes"]) or measure(*a, **kw))
    ckpt = tmp_path / "model.safetensors"
    save_weights(tiny_model(depth=2).state_dict(), ckpt)
    data = _folder(tmp_path / "data", n_val=8)
    out = tmp_path / "out"
    args = ["--data-dir", str(data), "--checkpoint", str(ckpt), "--num-classes", "10", "--mixnmatch", "official"]
    args += ["--output", str(out), "--results-file", str(tmp_path / "r.csv"), *TINY]
    args += [
        "--latency",
        "--latency-repeats",
        "2",
        "--latency-warmup",
        "0",
        "--latency-live-mb",
        "1",
        "--latency-cache",
        str(tmp_path / "c.json"),
    ]
    rows = validate.main(args)
    assert len(rows) == 6 and all(r["latency_ms"] > 0 and r["latency_p90_ms"] >= r["latency_ms"] for r in rows)
    assert any(r["pareto_latency"] for r in rows) and live == [1 << 20]
    info = json.loads((out / "validate.json").read_text())
    assert info["latency"]["runtime"] == "eager" and info["latency"]["batch"] == 1
    assert info["latency"]["machine"] == lat.machine_name("cpu") and info["latency"]["cached"] == 0
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["latency_ms", "latency_p90_ms", "memory_mb", "pareto_latency"]
    assert "latency_ms" in (out / "validate.csv").read_text().splitlines()[0]
    assert (out / "validate.png").stat().st_size > 0
    again = validate.main(args)  # every timing from the cache
    assert [r["latency_ms"] for r in again] == [r["latency_ms"] for r in rows]
    assert json.loads((out / "validate.json").read_text())["latency"]["cached"] == 6


@pytest.mark.skipif(not ONNX, reason="onnx, onnxscript and onnxruntime are needed (pip install '.[export]')")
def test_export_from_results_round_trips_the_configuration(model, tmp_path, capsys):
    export_cli = load_script("export")
    ckpt = tmp_path / "model.safetensors"
    save_weights(model.state_dict(), ckpt)
    configs = official_sweep(model)
    rows = [
        _row(c.name, list(c.dims), 90.0 - i, 1e-6 * (10 - i), 1.0, mv.count_params(model, list(c.dims)))
        for i, c in enumerate(configs)
    ]  # stored timings in nanoseconds: the budget fits them, no real run can
    results = tmp_path / "validate.json"
    meta = dict(META, checkpoint=str(ckpt), pretrained=False, model_args=model.model_args, split="val")
    results.write_text(json.dumps(dict(meta, rows=rows)))
    out = tmp_path / "best.onnx"
    budget = rows[2]["latency_ms"]
    export_cli.main(["--from-results", str(results), "--max-ms", str(budget), "--retime-repeats", "2", "-o", str(out)])
    info = json.loads(Path(str(out) + ".json").read_text())
    want = rows[2]
    assert info["granularity_per_layer"] == want["dims"] and info["selection"]["name"] == want["name"]
    assert info["selection"]["dims"] == want["dims"] and info["selection"]["budget"]["max_ms"] == budget
    assert info["selection"]["budget"]["latency"] == "median"
    assert info["selection"]["measured"]["top1"] == want["top1"]
    assert info["selection"]["latency_measured_with"]["machine"] == "CPU X"
    assert info["checkpoint"] == str(ckpt) and info["model"] == META["model"]
    check = info["budget_check"]
    assert check["meets_budget"] is False and check["repeats"] == 2 and check["batch"] == 1
    assert check["machine"] == lat.machine_name("cpu") and check["runtime"].startswith("onnxruntime")
    err = capsys.readouterr().err
    assert "best.onnx misses its budget in onnxruntime" in err and f"max_ms={budget:g} (median): measured" in err
    assert "the results were timed on CPU X" in err
    assert "the results were timed in eager, best.onnx runs in onnxruntime" in err  # not the runtime timed
    import onnxruntime as ort

    x = torch.randn(3, 1, 28, 28)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad(), model.granularity(want["dims"]):
        ref = model(x)
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_export_budget_flags_are_checked(tmp_path):
    export_cli = load_script("export")
    results = tmp_path / "validate.json"
    results.write_text(json.dumps(dict(META, rows=ROWS)))
    out = str(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="--max-ms, --max-memory-mb and --max-params need --from-results"):
        export_cli.main(["--pretrained", "--max-ms", "5", "--output", out])
    with pytest.raises(ValueError, match="--granularity and --from-results exclude each other"):
        export_cli.main(["--from-results", str(results), "--granularity", "8", "--output", out])
    with pytest.raises(NoSubmodelFitsError, match="--from-results: no configuration of 5 fits .* fastest is g=8"):
        export_cli.main(["--from-results", str(results), "--max-ms", "1", "--output", out])
    with pytest.raises(ValueError, match="one of --checkpoint, --pretrained or --from-results is required"):
        export_cli.main(["--output", out])
    assert not list(tmp_path.glob("m.onnx*"))


def test_latency_flags_are_checked_before_any_evaluation():
    import argparse

    args = argparse.Namespace(latency=True, latency_runtime="onnxruntime")
    with pytest.raises(ValueError, match="--latency-runtime onnxruntime times on the CPU; got --device cuda"):
        lat.check_latency_args(args, "cuda")
    lat.check_latency_args(argparse.Namespace(latency=False, latency_runtime="onnxruntime"), "cuda")


@pytest.mark.skipif(not ONNX, reason="onnx, onnxscript and onnxruntime are needed (pip install '.[export]')")
def test_onnxruntime_latency_is_keyed_by_its_version(model, tmp_path, monkeypatch):
    cache = LatencyCache(tmp_path / "latency.json")
    children, real = [], lat._in_child

    def in_child(fn, *args):  # the real child process, its result recorded
        children.append((fn, real(fn, *args)))
        return children[-1][1]

    monkeypatch.setattr(lat, "_in_child", in_child)
    key, res = measure_latency(
        model, parse_granularities(model, ["8"]), runtime="onnxruntime", repeats=2, warmup=0, cache=cache
    )
    assert key["runtime"] == "onnxruntime" and key["onnxruntime"] == importlib.metadata.version("onnxruntime")
    # timed in a child process of its own, every session on one shared thread pool, settled before each call
    [(fn, (_, _, how))] = children
    assert fn is lat._ort_timings and how["pid"] != os.getpid() and how["per_session_threads"] is False
    assert key["settle"] == 1
    assert res[(8, 8)]["repeats"] == 2 and res[(8, 8)]["median_ms"] > 0
    assert cache.lookup(latency_key(model, "eager", 1)) == {}  # the eager key does not see ORT's timings
    assert set(cache.lookup(key)) == {"8 8"}
