"""What a workflow step is, for both sides: the client that submits a workflow
(:mod:`jobqueue.client.workflows`) and the worker that runs its steps (:mod:`jobqueue.worker.workflow`).

A step is a :class:`StepSignature` (a ``run_job`` signature registered under
:data:`jobqueue.shared.names.STEP_SIGNATURE_TYPE`, so a worker rebuilding the chain gets it back); its payload may
hold ``{"$prev": "<path>"}`` placeholders, checked at submit time (:func:`placeholder_paths`)
and filled in by the worker from the previous step's result (:func:`resolve_placeholders`).
The workflow's record in the result backend lives under
:func:`jobqueue.shared.records.workflow_key`, and each step's id maps back to its workflow
under :func:`jobqueue.shared.records.workflow_step_key`.
"""

from __future__ import annotations

from typing import Any

from celery.canvas import Signature

from jobqueue.errors import InvalidPayloadError, SubmitError
from jobqueue.shared.names import STEP_SIGNATURE_TYPE

#: The key of a placeholder: ``{"$prev": "output"}`` takes the previous step's ``output``.
PREV = "$prev"


@Signature.register_type(name=STEP_SIGNATURE_TYPE)
class StepSignature(Signature):  # type: ignore[misc]  # celery is untyped
    """A ``run_job`` signature that receives the previous step's result as ``previous``.

    A plain chain prepends the previous result to the next task's positional arguments;
    ``run_job`` takes keyword arguments only, so this moves it into ``kwargs["previous"]``.
    """

    @classmethod
    def from_dict(cls, d: Any, app: Any = None) -> StepSignature:
        return cls(d, app=app)

    def apply_async(self, args: Any = None, kwargs: Any = None, route_name: Any = None, **options: Any) -> Any:
        if args:
            kwargs = {**(kwargs or {}), "previous": args[0]}
        return super().apply_async((), kwargs, route_name, **options)


# -- placeholders -------------------------------------------------------------------------


def _is_placeholder(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and PREV in value


def placeholder_paths(value: Any) -> list[str]:
    """Every ``$prev`` path in ``value`` (raises :class:`SubmitError` for a malformed one)."""
    if _is_placeholder(value):
        path = value[PREV]
        if not isinstance(path, str):
            raise SubmitError(f"{PREV} takes a dotted path string, got {path!r}")
        return [path]
    if isinstance(value, dict):
        return [p for item in value.values() for p in placeholder_paths(item)]
    if isinstance(value, list):
        return [p for item in value for p in placeholder_paths(item)]
    return []


def _lookup(result: Any, path: str) -> Any:
    value = result
    for part in path.split(".") if path else ():
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def resolve_placeholders(value: Any, previous: Any) -> Any:
    """``value`` with every ``{"$prev": path}`` replaced by that path of ``previous``.

    Raises :class:`InvalidPayloadError` naming the path when ``previous`` has no such value.
    """
    if _is_placeholder(value):
        path = value[PREV]
        try:
            return _lookup(previous, path)
        except KeyError:
            keys = sorted(previous) if isinstance(previous, dict) else []
            raise InvalidPayloadError(
                f"{PREV} path {path!r} is not in the previous step's result (keys: {keys})"
            ) from None
    if isinstance(value, dict):
        return {k: resolve_placeholders(v, previous) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_placeholders(v, previous) for v in value]
    return value
