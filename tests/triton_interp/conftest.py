"""The Triton kernel tests run on CPU tensors through Triton's interpreter, which must be chosen before ``triton``
is imported. ``tests/test_triton_kernels.py`` runs each file here in a subprocess with ``TRITON_INTERPRET=1``;
a session without it collects nothing here (so no worker's ``triton`` is switched to the interpreter)."""
import os

import pytest

INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"
collect_ignore_glob = [] if INTERPRETER else ["test_*.py"]


def pytest_collection_modifyitems(items):
    pytest.importorskip("triton")
