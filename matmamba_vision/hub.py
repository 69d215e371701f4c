"""Published weights without a network: fail in about a second with what to do, or use the cached file.

timm downloads ``pretrained=True`` weights with huggingface_hub, which, with no network, retries for about a
minute and then raises a long ``LocalEntryNotFoundError`` traceback. :func:`resolve_hub_weights` decides first:
hub reachable (a 2-second probe) -> timm's usual path; not reachable (or ``HF_HUB_OFFLINE=1``) -> the file from
the local Hugging Face cache when it is there, else a ValueError saying how to load the weights instead.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

import timm
from timm.models._hub import HF_WEIGHTS_NAME, _get_safe_alternatives

__all__ = ["resolve_hub_weights", "hub_reachable", "PROBE_TIMEOUT_S"]

PROBE_TIMEOUT_S = 2.0


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face endpoint (``HF_ENDPOINT``) answers within ``timeout`` seconds (any HTTP status
    counts; proxies from the environment are used, as huggingface_hub does)."""
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def _hub_files(model_name: str, overlay: Optional[Dict[str, Any]]) -> Optional[Tuple[str, List[str]]]:
    """(repo id, the file names timm would try, in its order) for ``pretrained=True``, or None when it loads
    from elsewhere (a file, URL or state dict given in the overlay, or a ``local-dir:`` name)."""
    if model_name.startswith("local-dir:"):
        return None
    if model_name.startswith("hf-hub:"):
        return model_name[len("hf-hub:") :].split("@")[0], ["config.json"]
    cfg = timm.models.get_pretrained_cfg(model_name)
    merged = dict(cfg.to_dict() if cfg is not None else {}, **(overlay or {}))
    if merged.get("state_dict") is not None or merged.get("file") or not merged.get("hf_hub_id"):
        return None
    filename = merged.get("hf_hub_filename") or HF_WEIGHTS_NAME
    return merged["hf_hub_id"], [*_get_safe_alternatives(filename), filename]


def resolve_hub_weights(model_name: str, overlay: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """The ``pretrained_cfg_overlay`` to build ``model_name`` with ``pretrained=True``: ``overlay`` unchanged when
    the hub is reachable or not involved, with ``file=`` the cached copy when it is not reachable. ValueError
    (one line: what to do) when the weights can be had neither way."""
    from huggingface_hub import constants, try_to_load_from_cache

    source = _hub_files(model_name, overlay)
    if source is None:
        return overlay
    offline = bool(constants.HF_HUB_OFFLINE)
    if not offline and hub_reachable():
        return overlay
    repo, filenames = source
    for filename in filenames:
        cached = try_to_load_from_cache(repo, filename)
        if not isinstance(cached, str):
            continue
        if model_name.startswith("hf-hub:"):
            return overlay  # timm reads the cached folder itself (huggingface_hub falls back to the cache)
        return dict(overlay or {}, file=cached)
    filename = filenames[-1]
    why = "HF_HUB_OFFLINE is set" if offline else f"{constants.ENDPOINT} did not answer within {PROBE_TIMEOUT_S:g} s"
    raise ValueError(
        f"--pretrained: {model_name}'s weights ({repo}/{filename}) are not in the local Hugging Face cache and "
        f"{why}; download them where there is a network (then set HF_HUB_OFFLINE=1 to use the cache), or pass "
        f"the downloaded file with --initial-checkpoint (train.py) / --checkpoint (validate.py, retrieval.py) "
        f"instead of --pretrained"
    )
