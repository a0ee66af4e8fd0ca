"""A short, safe, one-line summary of a job's payload, for people looking at the monitor.

The payload itself never travels in events (it may be megabytes of workflow JSON and is not
the monitor's business), so the submitter puts this summary into the job metadata
(``payload_summary`` in ``kwargsrepr``) and the monitor's truth repair computes the same
summary from the result backend's kwargs for jobs it rebuilds. Both call
:func:`summarize_payload`, so the two paths agree.

* ``comfyui``: the node count, the number of input images and the class types
  (``7 nodes + 1 input image: CLIPTextEncode×2, KSampler, …``), never the images;
* ``simulation``: its fields (``steps=10 step_seconds=0.5 output='hello'``);
* ``a1111``: mode, size, steps, seed and the prompt (``txt2img 512×512, 20 steps, seed 42: a cat``),
  never the base64 ``init_images``;
* anything else: its top-level field names.

At most :data:`MAX_SUMMARY` printable characters; never raises. Values under secret keys
(:mod:`jobqueue.shared.masking`) are summarised as ``"•••"``.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

from jobqueue.shared.flat import Key, flat_key, from_flat_key
from jobqueue.shared.masking import DEFAULT_PATTERN, mask

#: Longest summary, in characters.
MAX_SUMMARY = 240
#: Longest shown value of one simulation field.
MAX_VALUE = 40


def _clean(text: str, limit: int) -> str:
    if not text.isprintable():  # the common, printable case skips the per-character pass
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _comfyui(payload: dict[str, Any]) -> str:
    workflow = payload.get("workflow")
    if not isinstance(workflow, dict):
        return "no workflow"
    types: Counter[str] = Counter()
    for node in workflow.values():
        kind = node.get("class_type") if isinstance(node, dict) else None
        types[_clean(kind, 60) if isinstance(kind, str) and kind else "?"] += 1
    parts = [name if n == 1 else f"{name}×{n}" for name, n in sorted(types.items())]
    noun = "node" if len(workflow) == 1 else "nodes"
    images = payload.get("images")
    inputs = len(images) if isinstance(images, dict) else 0
    extra = f" + {inputs} input image{'s' if inputs != 1 else ''}" if inputs else ""
    return f"{len(workflow)} {noun}{extra}: " + ", ".join(parts)


def _fields(payload: dict[str, Any]) -> str:
    return " ".join(f"{_clean(str(k), MAX_VALUE)}={_clean(repr(v), MAX_VALUE)}"
                    for k, v in sorted(payload.items(), key=lambda kv: str(kv[0])) if v is not None)


def _a1111(payload: dict[str, Any]) -> str:
    width, height = payload.get("width", 512), payload.get("height", 512)
    text = f"{payload.get('mode', 'txt2img')} {width}×{height}, {payload.get('steps', 50)} steps"
    if payload.get("n_iter", 1) != 1 or payload.get("batch_size", 1) != 1:
        text += f", {payload.get('n_iter', 1)}×{payload.get('batch_size', 1)} images"
    if payload.get("seed", -1) != -1:
        text += f", seed {payload.get('seed')}"
    prompt = payload.get("prompt")
    return text + (f": {_clean(prompt, 160)}" if isinstance(prompt, str) and prompt else "")


_SUMMARIES = {"comfyui": _comfyui, "simulation": _fields, "a1111": _a1111}


def summarize_payload(service: Any, payload: Any, secret_keys: str = DEFAULT_PATTERN) -> str | None:
    """The payload's summary, or None when there is no payload to summarise; values under keys
    matching ``secret_keys`` show as ``"•••"``. A small flat payload's summary is remembered
    (every job's start summarises its payload, and a worker sees the same few again and again)."""
    key = flat_key(payload)
    if key is not None and isinstance(service, str):
        return _summarize_flat(service, key, secret_keys)
    return _summarize(service, payload, secret_keys)


@functools.lru_cache(maxsize=256)
def _summarize_flat(service: str, key: Key, secret_keys: str) -> str | None:
    return _summarize(service, from_flat_key(key), secret_keys)


def _summarize(service: Any, payload: Any, secret_keys: str) -> str | None:
    if not isinstance(payload, dict):
        return None
    try:
        payload = mask(payload, secret_keys)
        summarize = _SUMMARIES.get(service) if isinstance(service, str) else None
        text = summarize(payload) if summarize else "fields: " + ", ".join(sorted(str(k) for k in payload))
    except Exception:  # a summary must never stop a submission or a repair
        return None
    return _clean(text, MAX_SUMMARY)
