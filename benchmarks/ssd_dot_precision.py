"""The operand precision of each dot of the Triton SSD (forward and backward kernels): the error that rounding one
dot's operands (TF32, bf16 or fp16) adds, against the float64 recurrence, at the 35M and 135M head shapes.

CPU only. The kernels run under Triton's interpreter, which multiplies float32 operands in float32 whatever
``input_precision`` says; here a hook on the interpreter's dot rounds one dot's operands first, as the GPU would
(TF32: 10-bit mantissa, round to nearest, ties away, as ``cvt.rna.tf32.f32``; bf16 and fp16: round to nearest
even, as ``.to()``), and leaves every other dot in float32. The inputs hold 16-bit values (x, B, C and dy rounded
to bf16, or to fp16 for the fp16 column; dt, A, D and the initial state float32), so the only rounding beyond
float32 arithmetic is the dot's. Errors: max |got - ref| over all elements of an output, and that divided by the
output's max |ref| (rel). The float32 rows are the floor (every dot in float32).

It ends with a choice per dot for 16-bit inputs (bf16 operands where every output stays within 2^-10 of its max,
half of a bf16 rounding; fp16 operands only where they are fp16 inputs already, exact and in range) and the
errors of that choice, all dots together, beside today's (every dot on TF32).

    python benchmarks/ssd_dot_precision.py [--seqlen 320] [--heads 4] [--kernels bwd_bc w_kernel]
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import argparse  # noqa: E402
import ast  # noqa: E402
import inspect  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from typing import Dict, List, Tuple  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

import matmamba_vision.ops.triton.ssd as ssd_module  # noqa: E402
from matmamba_vision.ops import ssd_recurrence_ref  # noqa: E402

# (label, headdim): 35M (D 512) and 135M (D 1024); both have d_state 128 and one group.
SHAPES = [("35M", 16), ("135M", 32)]
OUTPUTS = ["y", "final", "dx", "ddt", "dA", "dB", "dC", "dD", "dh0"]
KERNELS = [name for name, obj in vars(ssd_module).items() if name.endswith("_kernel") and hasattr(obj, "fn")]


def _dot_sites() -> Tuple[Dict[Tuple[str, int], str], set]:
    """(kernel, source line) -> 'a @ b' for every tl.dot in the SSD kernels (each line of a multi-line call),
    and the (kernel, dot) pairs that always multiply in float32 (``input_precision="ieee"`` written out)."""
    sites, fixed = {}, set()
    for name in KERNELS:
        fn = getattr(ssd_module, name).fn
        lines, first = inspect.getsourcelines(fn)
        for node in ast.walk(ast.parse("".join(lines))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "tl.dot":
                text = " @ ".join(re.sub(r"\.to\([^)]*\)", "", ast.unparse(a)) for a in node.args[:2])
                for line in range(node.lineno, node.end_lineno + 1):
                    sites[(name, first + line - 1)] = text
                if any(k.arg == "input_precision" and ast.unparse(k.value) == "'ieee'" for k in node.keywords):
                    fixed.add((name, text))
    return sites, fixed


SITES, FIXED = _dot_sites()
MODE: Dict[Tuple[str, str], str] = {}  # (kernel, dot) -> operand precision; absent: float32
SEEN: List[Tuple[str, str]] = []  # (kernel, dot) in the order first run
INEXACT: Dict[str, set] = {"bf16": set(), "fp16": set()}  # dots whose operands change when rounded to 16 bits
INPUTS = ["bf16"]  # the 16-bit format the current inputs hold


def _round(a: np.ndarray, mode: str) -> np.ndarray:
    if mode == "tf32":
        u = a.astype(np.float32).view(np.uint32)
        return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dtype).float().numpy()


def _site() -> Tuple[str, str]:
    frame = sys._getframe(2)
    while frame is not None:
        key = (frame.f_code.co_name, frame.f_lineno)
        if frame.f_code.co_filename == ssd_module.__file__ and key in SITES:
            return key[0], SITES[key]
        frame = frame.f_back
    raise RuntimeError("a dot outside the SSD kernels")


_create_dot = interpreter.interpreter_builder.create_dot


def _hooked_dot(a, b, d, input_precision, max_num_imprecise_acc):
    site = _site()
    if site not in SEEN:
        SEEN.append(site)
    if any(not np.array_equal(_round(t.data, INPUTS[0]), t.data) for t in (a, b)):
        INEXACT[INPUTS[0]].add(site)
    mode = MODE.get(site)
    if mode is not None:
        a = interpreter.TensorHandle(_round(a.data, mode), a.dtype)
        b = interpreter.TensorHandle(_round(b.data, mode), b.dtype)
    return _create_dot(a, b, d, input_precision, max_num_imprecise_acc)


interpreter.interpreter_builder.create_dot = _hooked_dot


def make_inputs(seqlen: int, h: int, p: int, n: int, dtype: torch.dtype, seed: int = 0):
    """Mamba2-like inputs: dt in [1e-3, 1e-1] (softplus of a normal around the init's dt_bias), A in [-16, -1];
    x, B, C and the output gradient rounded to ``dtype`` and held in float32."""
    g = torch.Generator().manual_seed(seed)
    r16 = lambda t: t.to(dtype).float()  # noqa: E731
    x = r16(torch.randn(1, seqlen, h, p, generator=g))
    dt_bias = torch.empty(h).uniform_(np.log(1e-3), np.log(1e-1), generator=g).exp().expm1().log()
    dt = F.softplus(0.5 * torch.randn(1, seqlen, h, generator=g) + dt_bias)
    A = -torch.empty(h).uniform_(1.0, 16.0, generator=g)
    B, C = (r16(torch.randn(1, seqlen, 1, n, generator=g)) for _ in range(2))
    D, h0 = torch.randn(h, generator=g), 0.5 * torch.randn(1, h, p, n, generator=g)
    gy, gf = r16(torch.randn(1, seqlen, h, p, generator=g)), torch.randn(1, h, p, n, generator=g)
    return (x, dt, A, B, C, D, h0), (gy, gf)


def reference(inputs, grads):
    """float64 outputs and gradients of the recurrence (y += D x)."""
    ins = [t.double().requires_grad_() for t in inputs]
    x, dt, A, B, C, D, h0 = ins
    y, final = ssd_recurrence_ref(x, dt, A, B, C, initial_state=h0, return_final_state=True)
    y = y + x * D[:, None]
    got = torch.autograd.grad((y, final), ins, [g.double() for g in grads])
    return [y.detach(), final.detach(), *got]


def triton_run(inputs, grads, chunk: int):
    """Outputs and gradients of the Triton kernels (float32 inputs, so every kernel dot is a float32 dot)."""
    ins = [t.clone().requires_grad_() for t in inputs]
    y, final = ssd_module.ssd(*ins[:5], D=ins[5], initial_state=ins[6], return_final_state=True, chunk_size=chunk)
    got = torch.autograd.grad((y, final), ins, grads)
    return [y.detach(), final.detach(), *got]


def errors(got, ref) -> List[Tuple[float, float]]:
    out = []
    for a, w in zip(got, ref):
        err = (a.double() - w).abs().max().item()
        out.append((err, err / max(w.abs().max().item(), 1e-300)))
    return out


def fmt(errs: List[Tuple[float, float]]) -> str:
    return "  ".join(f"{e:8.1e}/{r:7.1e}" for e, r in errs)


LIMIT = 2.0**-10  # half of a bf16 rounding (2^-9 of a value): the most a dot may add, relative to an output's max


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqlen", type=int, default=192, help="tokens (chunks of 64; default 192: three chunks)")
    ap.add_argument("--heads", type=int, default=2, help="heads (one group; default 2)")
    ap.add_argument(
        "--kernels", nargs="*", default=None, help="measure only the dots of kernels whose names contain one of these"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"SSD dot operand precision vs the float64 recurrence: seqlen {args.seqlen}, {args.heads} heads, ")
    print("d_state 128, chunk 64. Per output: max abs error / that relative to the output's max |ref|.")
    print(
        "'*': the kernel writes input_precision='ieee' (float32 states, whatever the inputs); rounded for reference.\n"
    )
    head = f"{'shape':5} {'kernel':20} {'dot':30} {'operands':8} " + "  ".join(f"{o:>16}" for o in OUTPUTS)
    cases = {}
    for label, p in SHAPES:
        for in_dtype in (torch.bfloat16, torch.float16):
            inputs, grads = make_inputs(args.seqlen, args.heads, p, 128, in_dtype)
            cases[(label, in_dtype)] = (inputs, grads, reference(inputs, grads))
    triton_run(*cases[(SHAPES[0][0], torch.bfloat16)][:2], 64)  # records every dot the scan runs, in order
    missed = sorted({(k, d) for (k, _), d in SITES.items() if (k, d) not in SEEN})
    if missed:  # a dot in a branch that float32 inputs skip (16-bit operands): its float32 twin is measured
        print("not run with float32 inputs (16-bit branches):", ", ".join(f"{k.strip('_')}: {d}" for k, d in missed))
    measured = [site for site in SEEN if not args.kernels or any(k in site[0] for k in args.kernels)]
    worst: Dict[Tuple[Tuple[str, str], str], float] = {}  # (dot, mode) -> max rel error over outputs and shapes

    def run(label, in_dtype, mode_map, kernel, dot, mode):
        inputs, grads, ref = cases[(label, in_dtype)]
        INPUTS[0] = {torch.bfloat16: "bf16", torch.float16: "fp16"}[in_dtype]
        MODE.clear()
        MODE.update(mode_map)
        errs = errors(triton_run(inputs, grads, 64), ref)
        print(f"{label:5} {kernel.strip('_'):20} {dot[:30]:30} {mode:8} {fmt(errs)}", flush=True)
        return max(r for _, r in errs)

    for label, _ in SHAPES:
        print(head)
        for in_dtype, modes in ((torch.bfloat16, ("tf32", "bf16")), (torch.float16, ("fp16",))):
            name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[in_dtype]
            run(label, in_dtype, {}, "(all)", f"(inputs {name})", "fp32")
            for site in measured:
                for mode in modes:
                    tag = mode + ("*" if site in FIXED else "")
                    err = run(label, in_dtype, {site: mode}, site[0], site[1], tag)
                    worst[(site, mode)] = max(worst.get((site, mode), 0.0), err)
        print()
    free = [site for site in measured if site not in FIXED]
    print(f"Choice for 16-bit inputs (per dot: bf16 where the error with it stays <= 2^-10 = {LIMIT:.1e} of every")
    print("output's max at both shapes, else float32 operands on TF32; fp16 only where the operands are already")
    print("fp16 values, as fp32 intermediates such as states could pass fp16's range):")
    choice = {}
    for site in measured:
        if site in FIXED:
            c16, c_h = "fp32 (always)", "fp32 (always)"
        else:
            c16 = "bf16" if worst[(site, "bf16")] <= LIMIT else "tf32"
            c_h = "fp16" if site not in INEXACT["fp16"] else "tf32"
            choice[site] = (c16, c_h)
        exact = "exact" if site not in INEXACT["bf16"] else "rounded"  # in the bf16 inputs' runs
        print(
            f"  {site[0].strip('_'):20} {site[1][:30]:30} bf16 inputs: {c16:13} (operands {exact:7}, "
            f"worst {worst[(site, 'bf16')]:.1e})   fp16 inputs: {c_h}"
        )
    print()
    if args.kernels:
        print("(--kernels: the dots not measured stay float32 in the two rows below)")
    print(head)
    for label, _ in SHAPES:
        for in_dtype, idx, name in ((torch.bfloat16, 0, "bf16"), (torch.float16, 1, "fp16")):
            run(label, in_dtype, {site: "tf32" for site in free}, "(all)", f"today: TF32 ({name} inputs)", "tf32")
            chosen = {site: c[idx] for site, c in choice.items()}
            run(label, in_dtype, chosen, "(all)", f"the choice above ({name})", "mixed")


if __name__ == "__main__":
    main()
