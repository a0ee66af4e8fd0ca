"""How faithful (or how unlucky) a simulated ComfyUI is: switches the tests turn, read by the
engine and the server, changed while running through ``POST /_sim/options``.

* ``history_gap``: seconds between a prompt's last execution message and its /history entry.
  A real ComfyUI started with ``--disable-smart-memory`` unloads every model there
  (``execution.py``: ``unload_all_models()`` after ``execution_success``, before the prompt
  worker's ``task_done`` writes the history): seconds for large models.
* ``oom_next``: the next N prompts fail with ComfyUI's out-of-memory ``execution_error`` in
  their first node that runs (:func:`out_of_memory`), as a real card too small for the
  workflow does.
* ``crash_restart``: seconds a crashed server (the ``SimCrash`` node) stays down before it
  listens again, empty, as a supervisor restarts a ComfyUI that died; negative: it stays down.
* ``load_seconds``: what running ``CheckpointLoaderSimple`` costs. ComfyUI runs a loader again
  whenever its cache does not hold the node's output (the classic cache keeps only the
  previous prompt's nodes), reading the file and building a new model that sampling loads into
  VRAM again: a prompt whose checkpoint differs from the previous prompt's pays it, the next
  one with the same checkpoint is cached. ``checkpoint_gb``: VRAM a loaded checkpoint takes
  (see :meth:`~jobqueue.sims.comfyui.engine.Simulator.load_checkpoint`).
* ``gc_pause``: seconds a collection holds the whole server (nothing answers, nothing runs).
  A real ComfyUI's prompt worker runs ``gc.collect()`` (and empties the CUDA cache) after a
  prompt at most every 10 s (``main.py``'s ``gc_collect_interval``): right after a prompt
  once 10 s have passed since the last one, else when its queue wait times out at the 10 s
  mark; the collection holds the GIL, so the HTTP server and the websockets stall with it:
  about 1 s with torch loaded on a busy 2-core machine (docs/benchmarks.md §7). 0: instant.
* ``older``: answer like a ComfyUI from before the execution model of August 2024: a cached
  output node sends no ``executed`` message (only ``/history`` names its files) and
  ``/system_stats`` reports no ``comfyui_version`` (that came later still, with 0.3).
* ``newer``: answer like a ComfyUI newer than 0.3.64 (current master): ``missing_node_type``
  validation errors, ``invalid_prompt_id`` for a ``prompt_id`` that is not a canonical UUID,
  a 6th (sensitive) element on queue items that ``/queue`` strips, ``create_time`` in
  ``extra_data``, and the atomic ``POST /api/jobs/{id}/cancel``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

#: The tips ComfyUI's ``execution.py`` appends to an out-of-memory exception message.
OOM_TIPS = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you "
            "might have accidentally set the batch_size to a large number.")


@dataclass
class SimOptions:
    """The switches (see the module docstring)."""

    history_gap: float = 0.0
    oom_next: int = 0
    newer: bool = False
    older: bool = False
    crash_restart: float = 1.0
    load_seconds: float = 0.0
    checkpoint_gb: float = 6.5
    gc_pause: float = 0.0

    def update(self, data: Any) -> None:
        """Apply ``{name: value}``; raises ValueError for an unknown name or a wrong type."""
        if not isinstance(data, dict):
            raise ValueError("expected an object of option -> value")
        known = {f.name: f.type for f in fields(self)}
        for name, value in data.items():
            if name not in known:
                raise ValueError(f"unknown option {name!r} (known: {', '.join(known)})")
            kinds: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "bool": (bool,)}
            kind = kinds[str(known[name])]
            if not isinstance(value, kind) or (kind != (bool,) and isinstance(value, bool)):
                raise ValueError(f"option {name!r} must be {known[name]}, got {value!r}")
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class OutOfMemoryError(RuntimeError):
    """Stands for ``torch.OutOfMemoryError`` (ComfyUI names it ``torch.OutOfMemoryError``)."""


OutOfMemoryError.__module__ = "torch"


def out_of_memory(requested_gib: float = 2.0, vram_gib: float | None = None) -> OutOfMemoryError:
    """The exception a CUDA allocation beyond the card raises (cudaMallocAsync's wording, which
    ComfyUI's default allocator shows)."""
    limit = vram_gib if vram_gib else 8.0
    return OutOfMemoryError(
        "Allocation on device 0 would exceed allowed memory. (out of memory)\n"
        f"Currently allocated     : {max(limit - 0.5, 0.0):.2f} GiB\n"
        f"Requested               : {requested_gib:.2f} GiB\n"
        f"Device limit            : {limit:.2f} GiB\n"
        "Free (according to CUDA): 0 bytes\n"
        "PyTorch limit (set by user-supplied memory fraction)\n"
        "                        : 17179869184.00 GiB")


def full_type_name(kind: type) -> str:
    """An exception's type as ComfyUI's ``execution.full_type_name`` writes it: the bare name
    for builtins, else ``module.QualName`` (``torch.OutOfMemoryError``)."""
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
