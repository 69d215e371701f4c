"""``--help`` of train.py, validate.py and retrieval.py shows every flag's default."""

import importlib.util
import re
from pathlib import Path

import pytest

from matmamba_vision.training.config import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _script_parse_args(name):
    spec = importlib.util.spec_from_file_location(f"_help_{name}", ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.parse_args


def _help_text(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    parse = build_parser().parse_args if name == "train" else _script_parse_args(name)
    with pytest.raises(SystemExit):
        parse(["--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["train", "validate", "retrieval"])
def test_every_flag_shows_its_default(name, capsys, monkeypatch):
    text = _help_text(name, capsys, monkeypatch)
    options = text[text.index("\noptions:") :]
    # one block per flag: a line starting with two spaces and a dash, with its wrapped help lines
    blocks = re.split(r"\n(?=  -)", options)[1:]
    assert len(blocks) > (60 if name == "train" else 20)
    missing = [
        b.split("\n")[0].strip()
        for b in blocks
        if not b.lstrip().startswith("-h, --help") and "default" not in b.split("\n\n")[0].lower()
    ]
    assert not missing, f"{name}.py --help shows no default for {missing}"
    if name == "train":
        assert re.search(r"--epochs EPOCHS\s+default: 8", text) and re.search(r"--lr LR\s+default: 0.003", text)
        assert "(default: '')" in text  # an empty default is shown as such, not as nothing
