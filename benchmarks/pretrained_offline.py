"""``pretrained=True`` with no network: time to the error, timm's own path vs ``build_model`` (imports excluded).

python benchmarks/pretrained_offline.py     # on a machine without network; uses an empty HF_HOME
"""

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HOME"] = tempfile.mkdtemp()  # before huggingface_hub is imported: an empty cache
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm  # noqa: E402

import matmamba_vision  # noqa: E402,F401
from matmamba_vision.weights import build_model  # noqa: E402

NAME = "matmamba_vision_35m_patch16_224"
start = time.perf_counter()
try:
    timm.create_model(NAME, pretrained=True)
    print("timm.create_model(pretrained=True): loaded (the hub is reachable)")
except Exception as e:  # noqa: BLE001 - whatever timm raises offline
    print(f"timm.create_model(pretrained=True): {time.perf_counter() - start:.1f} s, {type(e).__name__}")
start = time.perf_counter()
try:
    build_model(NAME, pretrained=True)
    print("build_model(pretrained=True): loaded")
except ValueError as e:
    print(
        f"build_model(pretrained=True): {time.perf_counter() - start:.2f} s, ValueError, "
        f"{len(str(e).splitlines())} line"
    )
