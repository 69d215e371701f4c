"""export_model and export.py: ONNX (run in ONNX Runtime) and torch.export programs of any submodel."""

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest
import timm
import torch
from test_golden import load_golden, model_kwargs, rel_err

import matmamba_vision as mv
from matmamba_vision import export as mv_export
from matmamba_vision.export import ExportVerificationError, export_model, sidecar_path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("_script_export", ROOT / "export.py")
export_cli = importlib.util.module_from_spec(_spec)  # the root script
_spec.loader.exec_module(export_cli)

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="onnx, onnxscript and onnxruntime are needed (pip install '.[export]')",
)

TINY = dict(embed_dim=32, depth=2, d_state=8, headdim=8)  # valid g: multiples of 4 up to 32
CASES = {"full": None, "d8": 4, "mixnmatch": [32, 8]}
SUFFIX = {"onnx": ".onnx", "exported-program": ".pt2"}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **TINY).eval()
    with torch.no_grad():  # decays of every size, so the scan's work shows in the outputs
        for blk in model.layers:
            blk.mixer.dt_bias.add_(torch.linspace(-1.0, 2.0, blk.mixer.nheads))
    return model


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """Each case in each format, written once (with its JSON) and shared by the tests."""
    folder = tmp_path_factory.mktemp("exported")
    return {
        (case, fmt): export_model(tiny, folder / f"{case}{SUFFIX[fmt]}", granularity=g, format=fmt, sidecar=True)
        for case, g in CASES.items()
        for fmt in SUFFIX
    }


def run_exported(path: Path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        assert isinstance(inp.shape[0], str) and inp.shape[1:] == list(x.shape[1:])  # dynamic batch, fixed size
        return torch.from_numpy(session.run(None, {inp.name: x.numpy()})[0])
    with open(path, "rb") as f:
        return torch.export.load(f).module()(x)


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_submodel_matches_nested_model_in_onnx_runtime(exported, tiny, case):
    import onnx

    x = torch.randn(5, 1, 28, 28)  # a batch size neither the trace nor the verification used
    with torch.no_grad(), tiny.granularity(CASES[case]):
        want = tiny(x)
    assert rel_err(run_exported(exported[case, "onnx"], "onnx", x), want) <= 1e-4
    proto = onnx.load(str(exported[case, "onnx"]))
    assert {o.domain: o.version for o in proto.opset_import}[""] >= 17
    assert {n.domain for n in proto.graph.node} <= {""}  # standard ONNX ops only


@pytest.mark.parametrize("case", list(CASES))
def test_exported_program_matches_nested_model_and_holds_only_its_weights(exported, tiny, case):
    with open(exported[case, "exported-program"], "rb") as f:
        program = torch.export.load(f)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad(), tiny.granularity(CASES[case]):
        want = tiny(x)
    assert rel_err(program.module()(x), want) <= 1e-4
    sub = {k: tuple(v.shape) for k, v in mv.extract_submodel(tiny, CASES[case]).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in program.state_dict.items()} == sub
    assert all(
        n.target.namespace in ("aten", "prims")
        for n in program.graph.nodes  # loads without this package
        if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
    )


def test_onnx_file_holds_only_the_submodels_weights(exported, tiny):
    # the D/8 file is smaller than the full one by at least the weights it leaves out
    left_out = 4 * (mv.count_params(tiny) - mv.count_params(tiny, 4))
    assert exported["full", "onnx"].stat().st_size - exported["d8", "onnx"].stat().st_size >= 0.9 * left_out


def test_sidecar_describes_the_file(exported, tiny):
    path = exported["mixnmatch", "onnx"]
    info = json.loads(sidecar_path(path).read_text())
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["granularity"] == [32, 8] and info["granularity_per_layer"] == [32, 8]
    assert info["model_args"]["mixer_dims"] == [32, 8] and info["params"] == mv.count_params(tiny, [32, 8])
    assert info["input"] == {"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32", "layout": "NCHW"}
    assert info["preprocessing"]["mean"] == [pytest.approx(0.2860)] and info["preprocessing"]["crop_pct"] == 1.0
    assert 0 <= info["verification"]["max_relative_error"] <= 1e-4 and info["opset"] >= 17


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(granularity=6), "granularity must be a multiple of 4"),
        (dict(granularity=[32]), "one entry per block"),
        (dict(format="tflite"), "format must be one of"),
        (dict(opset=13), "opset must be an integer >= 17"),
        (dict(img_size=30), "img_size .* multiple of patch_size"),
    ],
)
def test_bad_arguments_fail_before_writing(tiny, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_model(tiny, tmp_path / "m.onnx", **kwargs)
    assert not list(tmp_path.iterdir())


def test_outputs_that_cannot_be_written_are_refused(tiny, tmp_path):
    (tmp_path / "taken.onnx").write_bytes(b"old")
    with pytest.raises(ValueError, match="exists; replace it with overwrite=True"):
        export_model(tiny, tmp_path / "taken.onnx")
    assert (tmp_path / "taken.onnx").read_bytes() == b"old"
    with pytest.raises(ValueError, match="is a folder"):
        export_model(tiny, tmp_path)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot write there"):
        export_model(tiny, tmp_path / "file" / "m.onnx")


def test_failed_verification_raises_with_the_figure_and_leaves_nothing(tiny, tmp_path, monkeypatch):
    # The write and the runtime stood in for (the real ones run above): the loaded program answers off by 1e-3.
    monkeypatch.setattr(mv_export, "_trace", lambda sub: None)
    monkeypatch.setattr(torch.export, "save", lambda program, f: f.write(b"program"))
    reference = mv.extract_submodel(tiny, 8).eval()
    monkeypatch.setattr(mv_export, "_program_runner", lambda path: lambda x: reference(x) * 1.001)
    with pytest.raises(
        ExportVerificationError,
        match=r"m\.pt2: the loaded ExportedProgram differs from PyTorch by "
        r"relative error 0\.001 > 0\.0001 at batch 1; nothing was written",
    ):
        export_model(tiny, tmp_path / "m.pt2", granularity=8, format="exported-program", sidecar=True)
    assert not list(tmp_path.iterdir())


def official_checkpoint(tmp_path):
    tensors, meta, state = load_golden("official_tiny")
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)  # the official layout, as published
    return tensors, meta, path


def kwargs_flag(meta):
    return [f"{k}={v}" for k, v in model_kwargs(meta["config"]).items()]


def test_cli_exports_an_official_checkpoint_that_matches_the_golden_logits(tmp_path):
    tensors, meta, ckpt = official_checkpoint(tmp_path)
    case = "mixnmatch1"
    dims = meta["cases"][case]["dims_per_layer"]
    out = tmp_path / "official.onnx"
    export_cli.main(
        [
            "--model",
            "matmamba_vision_35m_patch16_224",
            "--model-kwargs",
            *kwargs_flag(meta),
            "--checkpoint",
            str(ckpt),
            "--granularity",
            ",".join(map(str, dims)),
            "--output",
            str(out),
            "--mean",
            "0.5",
            "--std",
            "0.25",
        ]
    )
    assert rel_err(run_exported(out, "onnx", tensors["input"]), tensors[f"logits.{case}"]) <= 1e-4
    info = json.loads(sidecar_path(out).read_text())
    assert info["model"] == "matmamba_vision_35m_patch16_224" and info["checkpoint"] == str(ckpt)
    assert info["granularity_per_layer"] == dims and info["preprocessing"]["std"] == [0.25] * 3
    assert info["input"]["shape"] == ["batch", 3, 32, 32]


def test_cli_refuses_bad_input_on_one_line_before_any_work(tmp_path):
    _, meta, ckpt = official_checkpoint(tmp_path)
    base = [
        "--model",
        "matmamba_vision_35m_patch16_224",
        "--model-kwargs",
        *kwargs_flag(meta),
        "--checkpoint",
        str(ckpt),
    ]
    (tmp_path / "old.onnx").write_bytes(b"old")
    with pytest.raises(ValueError, match="old.onnx exists; replace it with overwrite=True \\(--force\\)"):
        export_cli.main(base + ["--output", str(tmp_path / "old.onnx")])
    with pytest.raises(ValueError, match="--granularity: layer 1: granularity must be a multiple of 1 in"):
        export_cli.main(base + ["--granularity", "64", "65", "--output", str(tmp_path / "m.onnx")])
    with pytest.raises(ValueError, match="--granularity: 'x' is not a list of integers"):
        export_cli.main(base + ["--granularity", "x", "--output", str(tmp_path / "m.onnx")])
    with pytest.raises(ValueError, match="pytorch_model.bin: does not fit MatMambaVision; .*shape mismatches"):
        export_cli.main(
            [
                "--model",
                "matmamba_vision_tiny_patch4_28",
                "--checkpoint",
                str(ckpt),
                "--output",
                str(tmp_path / "m.onnx"),
            ]
        )
    with pytest.raises(SystemExit):  # argparse: a format it does not know
        export_cli.main(base + ["--format", "tflite", "--output", str(tmp_path / "m.onnx")])
    assert sorted(os.listdir(tmp_path)) == ["old.onnx", "pytorch_model.bin"]
