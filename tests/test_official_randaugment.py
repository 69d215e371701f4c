"""The official RandAugment (--aa official): each op against a plain numpy reference of the official semantics
on fixed images, the magnitude of each op, the draws, the PIL transform and the ffcv Operation."""

import gc
import random

import numpy as np
import pytest
import torch

pytest.importorskip("numba", reason="--aa official needs numba (pip install '.[augment]')")

import official_ra_reference as ref  # noqa: E402

from matmamba_vision.data import official_randaugment as ra  # noqa: E402


def _image(h, w, seed=0):
    """Noise with a bright band and a dark corner (so autocontrast, solarize and equalize have work)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(30, 220, (h, w, 3), dtype=np.uint8)
    img[: h // 4] = rng.integers(200, 256, (h // 4, w, 3), dtype=np.uint8)
    img[-3:, :3] = 0
    return img


@pytest.fixture(scope="module")
def run():
    """apply_op into a fresh buffer (numba compiles it once for the module)."""

    def go(src, idx, mag, fixed=False):
        dst = np.full_like(src, 77)
        ra.apply_op(src, dst, idx, float(mag), fixed)
        return dst

    return go


MAGS = ra.op_magnitudes(9)


@pytest.mark.parametrize("idx", range(15), ids=ra.OP_NAMES)
def test_each_op_matches_the_reference(run, idx):
    src = _image(23, 30)  # odd, non-square: the centre and axis conventions show
    for sign in (1, -1) if ra.SIGNED[idx] else (1,):
        for fixed in (False, True):
            mag = sign * MAGS[idx]
            got, want = run(src, idx, mag, fixed), ref.apply(src, idx, mag, fixed)
            np.testing.assert_array_equal(got, want, err_msg=f"{ra.OP_NAMES[idx]} mag {mag} fixed {fixed}")


def test_magnitudes_at_bin_9_of_31():
    """0.3 of each maximum: shear 0.09, translate 0.136 of the side (30 px at 224), rotate 9 degrees, enhance
    1 +- 0.27, posterize to 7 bits, solarize above 178.5."""
    want = [0, 0.09, 0.09, 0.3 * 150 / 331, 0.3 * 150 / 331, 9.0, 0.27, 0.27, 0.27, 0.27, 7, 178.5, 0, 0, 0]
    np.testing.assert_allclose(MAGS, want, rtol=1e-12, atol=1e-12)
    assert int(224 * MAGS[3]) == 30 and int(3 * MAGS[4]) == 0
    np.testing.assert_allclose(ra.op_magnitudes(30)[[1, 5, 6, 10, 11]], [0.3, 30.0, 0.9, 4, 0.0])
    assert ra.op_magnitudes(0)[10] == 8 and ra.op_magnitudes(0)[11] == 255
    with pytest.raises(ValueError, match="magnitude must be in"):
        ra.op_magnitudes(31)


def test_magnitudes_act_as_stated(run):
    """On real pixels: a dot moves 30 px with TranslateX (and none with the official TranslateY), a rotation by
    9 degrees turns a dot about the centre counter-clockwise, enhance scales by 1.27, posterize clears 1 bit."""
    img = np.zeros((224, 224, 3), np.uint8)
    img[112, 150] = 255
    moved = run(img, 3, MAGS[3])
    assert np.argwhere(moved[..., 0]).tolist() == [[112, 180]]
    assert (run(img, 4, MAGS[4]) == img).all()
    assert np.argwhere(run(img, 4, MAGS[4], fixed=True)[..., 0]).tolist() == [[142, 150]]
    ((y, x),) = np.argwhere(run(img, 5, MAGS[5])[..., 0])
    angle = np.degrees(np.arctan2(-(y - 111.5), x - 111.5) - np.arctan2(-(112 - 111.5), 150 - 111.5))
    assert abs(angle - 9) < 1.5
    flat = np.full((8, 8, 3), 100, np.uint8)
    assert (run(flat, 6, MAGS[6]) == 127).all() and (run(flat, 6, -MAGS[6]) == 73).all()
    assert (run(np.full((8, 8, 3), 255, np.uint8), 10, MAGS[10]) == 254).all()
    assert (run(np.full((8, 8, 3), 179, np.uint8), 11, MAGS[11]) == 76).all()
    assert (run(np.full((8, 8, 3), 178, np.uint8), 11, MAGS[11]) == 178).all()


def test_equalize_int16_quirk_and_fix(run):
    """Official: over 32,767 pixels below a level wrap the int16 count and those pixels turn black; the fixed
    op is torchvision's equalize."""
    import torchvision.transforms.functional as TF

    img = _image(200, 200, seed=3)
    official, fixed = run(img, 13, 0.0), run(img, 13, 0.0, fixed=True)
    tv = TF.equalize(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(fixed, tv)
    np.testing.assert_array_equal(official, ref.equalize(img, wrap16=True))
    below = np.concatenate([[0], np.cumsum(np.bincount(img[..., 0].ravel(), minlength=256))])[img[..., 0]]
    wrapped = below > 32767  # the brightest ~18 % of the 40,000 pixels
    assert 0.1 < wrapped.mean() < 0.3
    assert (official[..., 0][wrapped] == 0).all() and (fixed[..., 0][wrapped] > 200).all()
    assert (official[..., 0][~wrapped] == fixed[..., 0][~wrapped]).all()


class _Draws(random.Random):
    """Python's random with a fixed list of values for random() (randrange still from the seed)."""

    def __init__(self, uniforms, ops):
        super().__init__(0)
        self.uniforms, self.ops = list(uniforms), list(ops)

    def randrange(self, n):
        assert n == 15
        return self.ops.pop(0)

    def random(self):
        return self.uniforms.pop(0)


def test_draws_sign_only_signed_ops():
    assert ra.draw_op(_Draws([0.2], [5]), MAGS) == (5, -9.0)
    assert ra.draw_op(_Draws([0.7], [5]), MAGS) == (5, 9.0)
    assert ra.draw_op(_Draws([0.2], [11]), MAGS) == (11, 178.5)  # unsigned: the draw is made, the sign kept
    rng = random.Random(1)
    ops = [ra.draw_op(rng, MAGS)[0] for _ in range(3000)]
    assert set(ops) == set(range(15)) and max(np.bincount(ops)) < 3000 / 15 * 1.3


def test_pil_transform_replays_its_draws():
    from PIL import Image

    src = _image(21, 26, seed=5)
    t = ra.OfficialRandAugment()
    for seed in range(6):
        random.seed(seed)
        got = np.asarray(t(Image.fromarray(src)))
        random.seed(seed)
        want = src
        for _ in range(2):
            idx, mag = ra.draw_op(random, MAGS)
            want = ref.apply(want, idx, mag)
        np.testing.assert_array_equal(got, want)
    grey = t(Image.fromarray(src).convert("L"))
    assert grey.mode == "L" and grey.size == (26, 21)


def test_aa_values():
    from matmamba_vision.data.transforms import create_train_transform, official_aa

    assert official_aa("official") is False and official_aa("official-fixed") is True
    assert official_aa("rand-m9-n2") is None and official_aa("") is None
    with pytest.raises(ValueError, match="--aa must be 'official'"):
        official_aa("official-m9")
    cfg = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    names = [type(t).__name__ for t in create_train_transform(cfg, "official", re_prob=0.25).transforms]
    assert names[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "OfficialRandAugment"]
    erase = create_train_transform(cfg, "official", re_prob=0.25, re_max_area=0.3).transforms[-1]
    assert (erase.min_area, erase.max_area, erase.log_aspect_ratio) == (0.02, 0.3, (np.log(0.3), np.log(1 / 0.3)))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ffcv_operation_compiled():
    """Compiled as ffcv compiles it: with one op per image every output is one of the reference's outputs, and
    several ops are drawn; with two ops the Python form replays numpy's draws through the reference."""
    pytest.importorskip("ffcv", reason="the optional ffcv extra is not installed")
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State

    from matmamba_vision.data.ffcv_ops import OfficialRandAugmentOp

    batch = np.ascontiguousarray(np.repeat(_image(17, 19, seed=7)[None], 24, 0))
    op = OfficialRandAugmentOp(num_ops=1)
    state, (q, q2) = op.declare_state_and_memory(
        State(jit_mode=True, device=torch.device("cpu"), shape=(17, 19, 3), dtype=np.dtype("uint8"))
    )
    assert q.shape == (17, 19, 3) and state.shape == (17, 19, 3)
    code = Compiler.compile(op.generate_code())
    out = code(batch, (np.zeros_like(batch), np.zeros_like(batch)))
    candidates = [ref.apply(batch[0], i, s * MAGS[i]) for i in range(15) for s in (1, -1)]
    hits = [[j for j, c in enumerate(candidates) if (c == o).all()] for o in out]
    assert all(hits), "an output is none of the 15 ops' outputs"
    assert len({h[0] // 2 for h in hits}) >= 5

    two = OfficialRandAugmentOp(num_ops=2, fixed=True).generate_code()  # plain Python with numpy's RNG
    np.random.seed(3)
    got = two(batch[:4], (np.zeros_like(batch[:4]), np.zeros_like(batch[:4])))
    np.random.seed(3)
    for img in got:
        want = batch[0]
        for _ in range(2):
            i = np.random.randint(0, 15)
            mag = -MAGS[i] if np.random.random() < 0.5 and ra.SIGNED[i] else MAGS[i]
            want = ref.apply(want, i, mag, fixed=True)
        np.testing.assert_array_equal(img, want)
    with pytest.raises(ValueError, match="after the image decoder"):
        op.declare_state_and_memory(
            State(jit_mode=False, device=torch.device("cpu"), shape=(17, 19, 3), dtype=np.dtype("uint8"))
        )
    del code  # numba's finalisers run here, inside this test's warning filter (see test_data_ffcv.py)
    gc.collect()
