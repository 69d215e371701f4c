"""Property-based: any valid per-layer granularity list and image size gives the extracted submodel's
outputs; every invalid list raises ValueError and changes nothing."""

import pytest
import timm
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import matmamba_vision as mv

DEPTH, D, STEP = 3, 32, 4  # headdim 8, expand 2: valid g = multiples of 4 in [4, 32]
MODEL = timm.create_model(
    "matmamba_vision_tiny_patch4_28", embed_dim=D, depth=DEPTH, d_state=8, headdim=8, dynamic_img_size=True
).eval()
VALID_G = st.integers(1, D // STEP).map(lambda k: k * STEP)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    dims=st.lists(VALID_G | st.none(), min_size=DEPTH, max_size=DEPTH),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    batch=st.integers(1, 3),
)
def test_nested_equals_extracted(dims, hw, batch):
    x = torch.randn(batch, 1, 4 * hw[0], 4 * hw[1])
    with torch.no_grad():
        with MODEL.granularity(dims):
            nested = MODEL(x)
        sub = mv.extract_submodel(MODEL, dims)
        torch.testing.assert_close(sub(x), nested, rtol=1e-5, atol=1e-5)
    assert MODEL.granularities == [None] * DEPTH


def _invalid_entry():
    return st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=D + 1),
        st.integers(1, D).filter(lambda g: g % STEP),
        st.floats(allow_nan=True),
        st.text(max_size=3),
        st.booleans(),
    )


@SETTINGS
@given(data=st.data())
def test_invalid_lists_raise(data):
    dims = data.draw(st.lists(VALID_G, min_size=DEPTH, max_size=DEPTH))
    if data.draw(st.booleans()):
        dims[data.draw(st.integers(0, DEPTH - 1))] = data.draw(_invalid_entry())
    else:  # wrong length
        dims = dims + [STEP] if data.draw(st.booleans()) else dims[: data.draw(st.integers(0, DEPTH - 1))]
    MODEL.set_granularity(None)
    with pytest.raises(ValueError):
        MODEL.set_granularity(dims)
    with pytest.raises(ValueError):
        mv.extract_submodel(MODEL, dims)
    with pytest.raises(ValueError):
        mv.count_params(MODEL, dims)
    assert MODEL.granularities == [None] * DEPTH
