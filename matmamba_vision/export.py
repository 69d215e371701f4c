"""Deploying one submodel outside eager PyTorch: ONNX (checked in ONNX Runtime) or a ``torch.export`` program.

The submodel is cut out with :func:`~matmamba_vision.extract_submodel` (only its weights are exported) and
traced through the model's shape-only paths (:func:`exportable_paths`), with a dynamic batch and the image
size fixed. Before the file appears at its path it is run on a few inputs and compared with PyTorch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch

from .elastic import count_params, extract_submodel
from .layers import use_backend
from .models.matmamba_vision import Granularity, MatMambaVision
from .runtime import check_output_dir
from .weights import atomic_write

__all__ = [
    "EXPORT_FORMATS",
    "MIN_OPSET",
    "DEFAULT_OPSET",
    "VERIFY_RTOL",
    "ExportVerificationError",
    "export_model",
    "exportable_paths",
    "sidecar_path",
    "check_output",
]

PathLike = Union[str, os.PathLike]
EXPORT_FORMATS = ("onnx", "exported-program")
MIN_OPSET = 17
DEFAULT_OPSET = 18
VERIFY_RTOL = 1e-4  # fp32: largest relative error (Frobenius norm over a batch) an export may show
VERIFY_BATCHES = (1, 3)  # batch sizes verification runs (two, so the dynamic batch is exercised)
INPUT_NAME, OUTPUT_NAME = "input", "output"
_EXAMPLE_BATCH = 2  # traced with 2 (torch.export specialises a size of 1)
_MAX_BATCH = 1 << 16


class ExportVerificationError(RuntimeError):
    """The exported file's outputs differ from PyTorch's by more than the tolerance; no file was left behind."""


@contextmanager
def exportable_paths(model: torch.nn.Module) -> Iterator[None]:
    """Inside, the model runs its paths whose work depends on the shapes only, as a tracer needs them: the exact
    SSD scan and the unfused depthwise conv (no data-dependent branches, no oneDNN-only op, no Triton kernel),
    and, with autograd's mode on, no in-place ops and no piece-by-piece scan of long sequences (those are the
    no-grad inference paths). The traced model's parameters must not require grad.

    This is the one place that selects those paths for export."""
    with use_backend(model, "reference"), torch.enable_grad():
        yield


def _to_aten_ops(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with this package's custom ops replaced by the aten ops they wrap (while tracing, the exact SSD
    calls ``cumsum_last``), so it holds aten ops only: ONNX has no translation for ours, and a loaded program would
    need this package. A node-by-node swap (``run_decompositions`` re-traces the whole graph: seconds)."""
    own = {torch.ops.matmamba_vision.cumsum_last.default: lambda t: ((t, -1), {})}
    graphs = [m for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)]  # HOPs' too
    for gm in graphs:
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target in own:
                node.args, node.kwargs = own[node.target](*node.args, **node.kwargs)
                node.target = torch.ops.aten.cumsum.default
        gm.recompile()
    foreign = sorted(
        {
            str(n.target)
            for gm in graphs
            for n in gm.graph.nodes
            if n.op == "call_function"
            and isinstance(n.target, torch._ops.OpOverload)
            and n.target.namespace not in ("aten", "prims")
        }
    )
    if foreign:
        raise RuntimeError(f"the traced graph holds non-aten ops {foreign}; map them in _to_aten_ops")
    return program


def sidecar_path(path: PathLike) -> Path:
    """The JSON written beside an exported file: ``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def check_output(path: PathLike, overwrite: bool = False, sidecar: bool = False, flag: str = "output") -> None:
    """ValueError (naming ``flag``) unless ``path`` (and its sidecar) can be written: not a folder, not an
    existing file unless ``overwrite``, in a folder that takes a probe file (created if missing)."""
    path = Path(path)
    for target in [path, sidecar_path(path)] if sidecar else [path]:
        if target.is_dir():
            raise ValueError(f"{flag} {target} is a folder; name a file")
        if target.exists() and not overwrite:
            raise ValueError(f"{flag} {target} exists; replace it with overwrite=True (--force)")
    check_output_dir(path.parent, flag)


def _require(modules: List[str], what: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(f"{what} needs {', '.join(missing)}: pip install 'matmamba-vision[export]'")


def _deployable_submodel(
    model: MatMambaVision, dims: List[Optional[int]], img_size: Optional[Union[int, Tuple[int, int]]]
) -> MatMambaVision:
    """The submodel at ``dims``, standalone, float32 on the CPU, in eval mode, no grad, at ``img_size``."""
    sub = extract_submodel(model, dims).to(device="cpu", dtype=torch.float32).eval().requires_grad_(False)
    sub.set_grad_checkpointing(False)
    if img_size is not None:
        sub.set_input_size(img_size=img_size)  # ValueError unless a positive multiple of the patch size
    return sub


def _input_shape(model: MatMambaVision) -> Tuple[int, int, int]:
    return (model.in_chans, *map(int, model.patch_embed.img_size))


def _trace(sub: MatMambaVision) -> torch.export.ExportedProgram:
    example = torch.randn(_EXAMPLE_BATCH, *_input_shape(sub))
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    with exportable_paths(sub):
        program = torch.export.export(sub, (example,), dynamic_shapes=({0: batch},))
    return _to_aten_ops(program)


def _write_onnx(program: torch.export.ExportedProgram, path: str, opset: int) -> None:
    onnx_program = torch.onnx.export(
        program,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    onnx_program.save(path, external_data=False)


def _onnx_runner(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])


def _program_runner(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    with open(path, "rb") as f:
        module = torch.export.load(f).module()
    return lambda x: module(x)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        return math.inf
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


def _verify(path: str, fmt: str, reference: MatMambaVision, name: str, rtol: float = VERIFY_RTOL) -> float:
    """Run the exported file (ONNX Runtime on the CPU, or the loaded program) on random inputs of each batch size
    in ``VERIFY_BATCHES`` and compare with ``reference`` in eager PyTorch; returns the largest relative error,
    ExportVerificationError above ``rtol`` (or non-finite)."""
    run = _onnx_runner(path) if fmt == "onnx" else _program_runner(path)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in VERIFY_BATCHES:
        x = torch.randn(batch, *_input_shape(reference), generator=gen)
        with torch.no_grad():
            want, got = reference(x), run(x)
        err = _relative_error(got, want)
        if not err <= rtol:  # NaN too
            runtime = "ONNX Runtime" if fmt == "onnx" else "the loaded ExportedProgram"
            raise ExportVerificationError(
                f"{name}: {runtime} differs from PyTorch by relative error {err:.3g} > {rtol:g} at batch {batch}; "
                "nothing was written"
            )
        worst = max(worst, err)
    return worst


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_version(dist: str) -> Optional[str]:
    """The installed version of ``dist``, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _sidecar(
    path: Path,
    fmt: str,
    model: MatMambaVision,
    sub: MatMambaVision,
    granularity: Granularity,
    opset: Optional[int],
    error: Optional[float],
    metadata: Dict[str, Any],
) -> Dict[str, Any]:
    """What a runtime needs beside the file: the input and its preprocessing, the submodel, the file's SHA-256."""
    from .data.transforms import model_data_config

    data = model_data_config(sub)
    c, h, w = _input_shape(sub)
    info = {
        "file": path.name,
        "format": fmt,
        "sha256": _file_sha256(path),
        "bytes": path.stat().st_size,
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", c, h, w], "dtype": "float32", "layout": "NCHW"},
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", sub.num_classes or sub.embed_dim],
            "kind": "logits" if sub.num_classes else "embedding",
        },
        "preprocessing": {
            k: data.get(k) for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        },
        "granularity": granularity,
        "granularity_per_layer": list(sub.model_args["mixer_dims"]),
        "params": count_params(sub),
        "model": (getattr(model, "pretrained_cfg", None) or {}).get("architecture"),
        "model_args": sub.model_args,
        "verification": None
        if error is None
        else {
            "runtime": "onnxruntime (CPU)" if fmt == "onnx" else "torch.export.load",
            "max_relative_error": error,
            "rtol": VERIFY_RTOL,
            "batch_sizes": list(VERIFY_BATCHES),
        },
        "versions": {
            d: package_version(d) for d in ("matmamba-vision", "torch", "timm", "onnx", "onnxscript", "onnxruntime")
        },
    }
    info.update(metadata)
    return _jsonable(info)


def export_model(
    model: MatMambaVision,
    path: PathLike,
    *,
    granularity: Granularity = None,
    format: str = "onnx",
    img_size: Optional[Union[int, Tuple[int, int]]] = None,
    verify: bool = True,
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
    sidecar: bool = False,
    metadata: Optional[Dict[str, Any]] = None,
) -> Path:
    """Export the submodel at ``granularity`` to ``path``; returns the path.

    Args:
        model: a MatMamba-Vision model (any device or dtype; the export is float32 on the CPU).
        path: the file to write (atomically: complete or absent).
        granularity: what ``set_granularity`` takes (None = full width, an int, or one per block); only that
            submodel's weights are exported.
        format: ``"onnx"`` (``torch.onnx.export`` via ``torch.export``, opset ``opset`` >= 17) or
            ``"exported-program"`` (``torch.export.save``; ``torch.export.load(path).module()`` runs it).
        img_size: the input size fixed in the graph (default the model's; others resample the position
            embedding as ``set_input_size`` does). The batch size is dynamic.
        verify: run the file (ONNX Runtime on the CPU, or the loaded program) on batches of 1 and 3 random
            images and compare with PyTorch: a relative error above 1e-4 raises ExportVerificationError and
            leaves no file.
        overwrite: replace an existing file (otherwise ValueError).
        sidecar: also write ``PATH.json`` (:func:`sidecar_path`): input name and shape, preprocessing (mean,
            std, interpolation, crop), granularity, model args, SHA-256 of the file, verification figure.
        metadata: entries added to the sidecar (e.g. the model name and checkpoint).

    Bad arguments raise ValueError before any work; a missing ``onnx``/``onnxruntime`` ModuleNotFoundError.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    if not isinstance(model, MatMambaVision):
        raise ValueError(f"model must be a MatMambaVision, got {type(model).__name__}")
    if format == "onnx" and (isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET):
        raise ValueError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    path = Path(path)
    check_output(path, overwrite, sidecar)
    dims = model.resolve_granularity(granularity)  # ValueError saying what is valid
    if format == "onnx":
        _require(["onnx", "onnxscript"] + (["onnxruntime"] if verify else []), "format='onnx'")
    sub = _deployable_submodel(model, dims, img_size)
    error: List[Optional[float]] = [None]

    def write(tmp: str) -> None:
        program = _trace(sub)
        if format == "onnx":
            _write_onnx(program, tmp, opset)
        else:
            with open(tmp, "wb") as f:  # a file object: torch.export wants a path to end in .pt2
                torch.export.save(program, f)
        if verify:
            error[0] = _verify(tmp, format, sub, path.name)

    atomic_write(path, write)
    if sidecar:
        info = _sidecar(
            path, format, model, sub, granularity, opset if format == "onnx" else None, error[0], dict(metadata or {})
        )
        atomic_write(sidecar_path(path), lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1) + "\n"))
    return path
