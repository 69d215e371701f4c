"""timm's ``test_model_default_cfgs_non_std``, as published, over every registered ``matmamba*`` model.

timm chooses the models of this test by name (its ``NON_STD_FILTERS``: ``vit_*``, ``deit*`` ...), so it never
picks ours, which are token-sequence models like those. This module calls the published function with our
names. ``run.py`` names timm's file in ``TIMM_TEST_MODELS``.
"""

import importlib.util
import os

import pytest
import timm

import matmamba_vision  # noqa: F401  (registers the models with timm)

if not os.environ.get("TIMM_TEST_MODELS"):
    pytest.skip("run by tests/timm_suite/run.py, which fetches timm's tests", allow_module_level=True)

_spec = importlib.util.spec_from_file_location("timm_test_models", os.environ["TIMM_TEST_MODELS"])
timm_test_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(timm_test_models)

cfg_device = timm_test_models.cfg_device  # the test's own fixture: the meta device


@pytest.mark.parametrize("model_name", timm.list_models("matmamba*", include_tags=True))
@pytest.mark.parametrize("batch_size", [1])
def test_model_default_cfgs_non_std(model_name, batch_size, cfg_device):
    timm_test_models.test_model_default_cfgs_non_std(model_name, batch_size, cfg_device)
