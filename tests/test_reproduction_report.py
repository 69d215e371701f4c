"""The reproduction report from results.json alone: strict verdicts, 1 seed and no variants, deterministic
Markdown, dated-free PNGs, the file's checks, the regeneration entry point and the committed report."""

import copy
import json
import math
import random
import re
import sys
from pathlib import Path

import pytest

from matmamba_vision.flags import EXIT_USAGE, run_script
from matmamba_vision.reproduction.report import (
    FORMAT,
    VERSION,
    Stat,
    accuracy_verdict,
    load_results,
    render_markdown,
    write_report,
)

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "docs" / "reproduction"
PNG = b"\x89PNG\r\n\x1a\n"
LEVELS = (128, 64, 32, 16)


def _params(w):
    return {"params_non_embedding": 40000 + 3000 * w, "gflops": 0.0005 + 0.00003 * w}


def make_results(seeds=(0, 1, 2), variants=("distill", "sample"), levels=LEVELS):
    """A synthetic, schema-complete results dict where every target is met."""
    rng = random.Random(0)
    D = max(levels)
    widths = list(range(min(levels), D + 1, 8))

    def acc(w, bonus=0.0):  # rises with width, so no untrained width dips below a trained one
        return round(88.5 + 1.5 * w / D + bonus + rng.uniform(-0.05, 0.05), 2)

    models, retrieval = [], []
    for v in ("", *variants):
        for s in seeds:
            name = f"nested-{v}-s{s}" if v else f"nested-s{s}"
            mix = []
            if not v:
                for a, b in zip(levels, levels[1:]):
                    p = (_params(a)["params_non_embedding"] + _params(b)["params_non_embedding"]) // 2
                    mix.append(
                        {
                            "name": f"{a}x2+{b}x2",
                            "dims": [a, a, b, b],
                            "top1": acc((a + b) / 2, -0.2),
                            "params_non_embedding": p,
                            "gflops": 0.001,
                        }
                    )
            models.append(
                {
                    "name": name,
                    "kind": "nested",
                    "variant": v,
                    "seed": s,
                    "init": "nested",
                    "init_seed": s,
                    "test": {"uniform": {str(w): acc(w, 0.02 if v else 0.0) for w in widths}, "mixnmatch": mix},
                    "minival": {str(g): acc(g, -0.2 if v == "distill" else -0.3) for g in levels},
                }
            )
            for g in levels:
                retrieval.append(_row(s, name, g, name, D, 88.0 - (D - g) / D))
    for init in ("own", "same"):
        for g in levels:
            for s in seeds:
                name = f"baseline-{init}-g{g}-s{s}"
                models.append(
                    {
                        "name": name,
                        "kind": "baseline",
                        "init": init,
                        "init_seed": 1000 * (s + 1) + g if init == "own" else s,
                        "width": g,
                        "seed": s,
                        **_params(g),
                        "test": {"uniform": {str(g): acc(g, -0.05)}},
                        "minival": {str(g): acc(g, -0.35)},
                    }
                )
                retrieval.append(_row(s, name, g, f"nested-s{s}", D, 9.0 if init == "own" else 30.0))
                retrieval.append(_row(s, name, g, name, g, 87.0))
    for i, s in enumerate(seeds):
        if len(seeds) > 1:
            other = seeds[(i + 1) % len(seeds)]
            for g in levels:
                retrieval.append(_row(s, f"nested-s{other}", g, f"nested-s{s}", D, 11.0))
    return {
        "format": FORMAT,
        "version": VERSION,
        "written": "2026-12-07T07:55:00+00:00",
        "commands": ["python reproduce.py --output output/reproduce", "python reproduce.py --output output/reproduce"],
        "plan": {
            "model": "matmamba_vision_tiny_patch7_28",
            "model_kwargs": {},
            "patches": 16,
            "tokens": 17,
            "depth": 4,
            "embed_dim": D,
            "levels": list(levels),
            "widths": widths,
            "seeds": list(seeds),
            "variants": list(variants),
            "sample_n": 2,
            "config": "configs/reproduce_fmnist.yaml",
            "train_args": ["--epochs", "3"],
            "data_args": [],
            "eval_args": ["-b", "256"],
            "holdout": {
                "train_split": "minitrain",
                "val_split": "minival",
                "size": 10000,
                "of": 60000,
                "seed": 0,
                "per_class": {str(c): 1000 for c in range(10)},
                "sha256": "ab" * 32,
            },
            "test_split": "val",
            "commit": "5cdda0f",
            "recipe_choice": {"chosen": "configs/reproduce_fmnist.yaml", "minival": {"a": 89.1}},
        },
        "machine": {"cpu": "AMD EPYC", "cores": 2, "torch": "2.14.1", "python": "3.11.2", "platform": "Linux"},
        "params": {str(w): _params(w) for w in widths},
        "models": models,
        "retrieval": retrieval,
        "stages": [
            {"name": "train nested-s0", "seconds": 210.4, "finished": "2026-12-07 06:40:01 UTC"},
            {"name": "validate nested-s0", "seconds": 12.0, "finished": "2026-12-07 06:40:13 UTC"},
        ],
    }


def _row(seed, query, qw, db, dw, top1):
    return {
        "seed": seed,
        "query_model": query,
        "query_width": qw,
        "db_model": db,
        "db_width": dw,
        "top1": top1,
        "map10": top1 - 3.0,
        "recall@1": top1,
        "recall@5": min(100.0, top1 + 5),
        "recall@10": min(100.0, top1 + 7),
    }


def _model(results, name):
    return next(m for m in results["models"] if m["name"] == name)


def _set_top1(results, prefix, g, values):
    """Test top-1 at width g of the models ``{prefix}-s{seed}``, one value per seed."""
    for s, v in zip(results["plan"]["seeds"], values):
        _model(results, f"{prefix}-s{s}")["test"]["uniform"][str(g)] = v


def _set_retrieval(results, query_prefix, qw, db_prefix, values):
    for s, v in zip(results["plan"]["seeds"], values):
        for r in results["retrieval"]:
            if (r["seed"], r["query_model"], r["query_width"], r["db_model"]) == (
                s,
                f"{query_prefix}-s{s}",
                qw,
                f"{db_prefix}-s{s}",
            ):
                r["top1"] = v


def _line(text, start):
    """The one line of ``text`` starting with ``start``."""
    hits = [line for line in text.splitlines() if line.startswith(start)]
    assert len(hits) == 1, (start, hits)
    return hits[0]


def _section(text, heading):
    return text.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]


@pytest.mark.parametrize(
    "nested, own, met",
    [
        ([89.70, 89.80, 89.90], [89.47, 89.47, 89.47], True),  # d = +0.33, ahead beyond the spread 0.2
        ([89.60, 89.80, 90.00], [89.47, 89.47, 89.47], False),  # d = +0.33, spread 0.4
        ([89.06, 89.16, 89.26], [89.47, 89.47, 89.47], False),  # d = -0.31
        ([89.67, 89.77, 89.87], [89.47, 89.47, 89.47], True),  # d = +0.30 (float noise), within 0.3
        ([89.80, 89.80, 89.80], [89.37, 89.47, 89.57], True),  # d = +0.33, the baseline's spread 0.2
        ([89.80, 89.80, 89.80], [89.27, 89.47, 89.67], False),  # d = +0.33, the baseline's spread 0.4
    ],
)
def test_accuracy_verdict_strict(nested, own, met):
    results = make_results()
    _set_top1(results, "nested", 64, nested)
    _set_top1(results, "baseline-own-g64", 64, own)
    line = _line(_section(render_markdown(results), "### 1."), "- D/2 (g=64): nested ")
    assert line.endswith("**met**") if met else "-> **missed**: " in line
    assert accuracy_verdict(Stat(tuple(nested)), Stat(tuple(own)))[0] is met


def test_accuracy_one_seed_has_no_spread_to_beat():
    ok, text = accuracy_verdict(Stat((89.80,)), Stat((89.47,)))
    assert not ok and "1 seed" in text
    assert accuracy_verdict(Stat((89.70,)), Stat((89.47,)))[0]


def test_targets_lines_end_in_a_verdict():
    text = render_markdown(make_results())
    targets = text.split("## Targets", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in targets.splitlines() if line.startswith("- ")]
    assert len(lines) == 4 + 4 + 3 + 3 + 4 + 1 + 1  # accuracy x2, retrieval x2, baseline queries, untrained x2
    assert all(line.endswith("**met**") for line in lines), lines
    assert "start from other weights" not in text


def test_retrieval_loss_at_every_level_below_D():
    results = make_results()
    _set_retrieval(results, "nested", 128, "nested", [88.29] * 3)
    _set_retrieval(results, "nested", 16, "nested", [85.91] * 3)  # loses 2.38
    _set_retrieval(results, "nested", 64, "nested", [86.42] * 3)  # loses 1.87
    sec = _section(render_markdown(results), "### 2.")
    assert "-> **missed**: loses 2.380 points" in _line(sec, "- D/8 (g=16): nested g")
    assert _line(sec, "- D/2 (g=64): nested g").endswith("**met**")
    assert "- D (g=128)" not in sec


def test_baseline_queries_must_be_50_points_below():
    results = make_results()
    _set_retrieval(results, "nested", 128, "nested", [88.29] * 3)
    _set_retrieval(results, "baseline-own-g128", 128, "nested", [86.70] * 3)
    sec = _section(render_markdown(results), "### 3.")
    assert "-> **missed**: only 1.590 points below" in _line(sec, "- D (g=128)")
    assert _line(sec, "- D/2 (g=64)").endswith("**met**")
    beside = [line for line in sec.splitlines() if line.startswith("  - beside it")]
    assert len(beside) == 4 and all(
        "null (another nested seed's queries) 11.00 (11.00-11.00, 3 seeds)" in b for b in beside
    )


def test_untrained_width_below_its_level_is_missed():
    results = make_results()
    _set_top1(results, "nested", 88, [88.0, 88.1, 88.2])  # below g=64
    line = _line(_section(render_markdown(results), "### 4."), "- nested: ")
    assert "(g=88 vs g=64)" in line and "**missed**: 1 of 11 below" in line and "g = 88)" in line


def test_variant_chosen_on_the_held_out_split():
    results = make_results()
    for s in (0, 1, 2):
        _model(results, f"nested-sample-s{s}")["minival"] = {str(g): 95.0 for g in LEVELS}
        _model(results, f"nested-s{s}")["test"]["uniform"]["64"] = 99.0  # the test split decides nothing
    text = render_markdown(results)
    assert "Chosen: **nested-sample**." in text
    assert "95.00 (95.00-95.00, 3 seeds)" in _section(text, "## Variant choice")
    assert _line(_section(text, "### 1."), "- D/2 (g=64): nested-sample ")
    assert _line(_section(text, "### 2."), "- D/8 (g=16): nested-sample ")
    assert _line(_section(text, "### 4."), "- nested-sample: ")


def test_one_seed_and_no_variants(tmp_path):
    results = make_results(seeds=(0,), variants=())
    text = write_report(results, tmp_path).read_text()
    assert (tmp_path / "fig3_accuracy.png").read_bytes().startswith(PNG)
    assert (tmp_path / "fig5_retrieval.png").read_bytes().startswith(PNG)
    assert "(1 seed)" in text and not re.search(r"\d seeds\)", text)
    assert "no null row" in text and "null: another" not in text
    assert "This run has no variants" in text and "distill" not in text and "sample" not in text
    targets = text.split("## Targets", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in targets.splitlines() if line.startswith("- ")]
    assert all(line.endswith("**met**") or "**missed**: " in line for line in lines)


def test_write_report_is_deterministic(tmp_path):
    results = make_results()
    before = copy.deepcopy(results)
    a = write_report(results, tmp_path / "a")
    b = write_report(copy.deepcopy(results), tmp_path / "b")
    assert results == before
    assert a.name == "REPRODUCTION.md" and a.read_bytes() == b.read_bytes()
    for png in ("fig3_accuracy.png", "fig5_retrieval.png"):
        data = (tmp_path / "a" / png).read_bytes()
        assert data.startswith(PNG) and data == (tmp_path / "b" / png).read_bytes()
        assert b"Software" not in data and b"2026" not in data
    text = a.read_text()
    for part in ("17 tokens (16 patches + [CLS])", "written 2026-12-07T07:55:00+00:00", "`ababab", "Commit: `5cdda0f`"):
        assert part in text
    assert text.count("python reproduce.py --output output/reproduce") == 2
    assert "Total: 222 s (3.7 min)." in text


def test_pareto_front_averages_configs_over_seeds():
    results = make_results()
    for s, v in zip((0, 1, 2), (99.0, 98.0, 97.0)):
        _model(results, f"nested-s{s}")["test"]["mixnmatch"][0]["top1"] = v
    front = _section(render_markdown(results), "### Mix'n'match")
    assert "| 128x2+64x2 | 98.00 (97.00-99.00, 3 seeds) | 328,000 |" in re.sub(" +", " ", front)
    assert "g=128" not in front  # dominated by the cheaper 128x2+64x2


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.update(version=2), "version must be 1"),
        (lambda r: r.update(format="other"), "format must be"),
        (lambda r: r.pop("retrieval"), "lack retrieval"),
        (lambda r: r["plan"].pop("holdout"), "plan lacks holdout"),
    ],
)
def test_load_results_rejects(tmp_path, edit, message):
    results = make_results(seeds=(0,), variants=())
    edit(results)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(ValueError, match=message):
        load_results(path)


def test_record_without_a_field_is_a_value_error():
    results = make_results(seeds=(0,), variants=())
    del results["retrieval"][0]["db_width"]
    with pytest.raises(ValueError, match="lacks a field"):
        render_markdown(results)


def test_load_results_rejects_non_json(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        load_results(path)


def test_regeneration_entry_point(tmp_path, capsys):
    sys.path.insert(0, str(REPO))
    import reproduce  # the repository's script: reproduce.py --report-from RESULTS --output DIR

    path = tmp_path / "results.json"
    path.write_text(json.dumps(make_results(seeds=(0, 1), variants=("distill",))))
    out = reproduce.main(["--report-from", str(path), "--output", str(tmp_path / "out")])
    assert out == tmp_path / "out" / "REPRODUCTION.md" and (tmp_path / "out" / "fig5_retrieval.png").is_file()
    with pytest.raises(SystemExit) as e:
        run_script(lambda: reproduce.main(["--report-from", str(tmp_path / "missing.json")]))
    assert e.value.code == EXIT_USAGE and "is not a file" in capsys.readouterr().err


def test_committed_report_regenerates(tmp_path):
    results = COMMITTED / "results.json"
    if not results.is_file():
        pytest.skip("docs/reproduction/results.json is not committed yet")
    path = write_report(load_results(results), tmp_path)
    assert path.read_bytes() == (COMMITTED / "REPRODUCTION.md").read_bytes()
    for png in ("fig3_accuracy.png", "fig5_retrieval.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG)


def test_stat_format():
    assert str(Stat((1.0, 2.0, 4.5))) == "2.50 (1.00-4.50, 3 seeds)"
    assert str(Stat((89.834,))) == "89.83 (1 seed)"
    assert math.isclose(Stat((1.0, 3.0)).spread, 2.0)
