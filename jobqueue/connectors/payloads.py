"""Job payloads as pydantic models, one per connector, and the one way their errors read.

Each connector's payload is a strict model (JSON types, no coercion: ``"20"`` is not a step
count; unknown fields refused), so the same rules check a job at submit, in the worker, and
(as JSON schema, :func:`payload_schema`) on the monitor's client page. :func:`check` turns a
model's validation errors into one :class:`~jobqueue.errors.InvalidPayloadError` that names
every problem: ``simulation: 'steps' must be an integer between 0 and 100000, got 'five'``.

The models describe the payload; each connector still returns the payload in its own
normalised form (the ``a1111`` payload, say, goes to the WebUI as the caller wrote it, without
the defaults a model dump would add).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

from annotated_types import Ge, Gt, Le
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic.fields import FieldInfo

from jobqueue.connectors.a1111.fields import (
    API_LIMITS,
    BOOL,
    DICT,
    FLOAT,
    INT,
    LIST,
    RANGES,
    ROUTES,
    STR,
    STR_LIST,
    all_field_names,
    request_fields,
)
from jobqueue.connectors.comfyui.inputs import InputImageError, check_images
from jobqueue.connectors.remembered import remembered
from jobqueue.errors import InvalidPayloadError

#: Upper bounds that keep a typo from booking a worker for a day (simulation).
MAX_STEPS = 100_000
MAX_STEP_SECONDS = 3600.0
#: Largest output file the simulation makes on request, in MB (MiB).
MAX_FILE_MB = 4096.0

#: A time limit in seconds: a positive, finite number.
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class PayloadModel(BaseModel):
    """Base of every payload model: JSON types only, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid")

    #: Added to a range complaint (``a1111``: where the limits come from).
    range_note: ClassVar[str] = ""


M = TypeVar("M", bound=PayloadModel)


# -- simulation ----------------------------------------------------------------------------------
class SimulationFile(PayloadModel):
    """One output file a simulated job makes: a valid file of ``kind`` and ``mb`` MiB."""

    kind: Annotated[Literal["image", "video", "audio", "model", "text", "file"], Field(
        description="png, mp4 (a real VP9 clip), wav, glb, txt or bin.")] = "file"
    mb: Annotated[float, Field(ge=0, le=MAX_FILE_MB, allow_inf_nan=False, description="Size in MiB.")] = 1.0
    name: Annotated[str | None, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
                                      description="File name (default: <kind>-<n>.<ext>).")] = None


class SimulationPayload(PayloadModel):
    """The ``simulation`` connector's job: ``steps`` steps of ``step_seconds`` each."""

    steps: Annotated[int, Field(ge=0, le=MAX_STEPS, description="Number of steps to run.")] = 1
    step_seconds: Annotated[float, Field(ge=0, le=MAX_STEP_SECONDS, allow_inf_nan=False,
                                         description="Seconds each step takes.")] = 0.0
    fail_at_step: Annotated[int | None, Field(description="Fail at this step (null: never).")] = None
    output: Annotated[Any, Field(description="Returned as the job's result.")] = None
    seed: Annotated[Any, Field(description="Returned with the result when given.")] = None
    files: Annotated[list[SimulationFile], Field(
        description="Output files to make (streamed to the output store), e.g. a video.")] = []


# -- comfyui -------------------------------------------------------------------------------------
class ComfyUIPayload(PayloadModel):
    """The ``comfyui`` connector's job: an API-format workflow (ComfyUI's "Save (API)")."""

    workflow: Annotated[dict[str, Any], Field(
        description="API-format workflow: node id -> {class_type, inputs}.")]
    timeout: Seconds | None = None
    stall_timeout: Seconds | None = None
    node_timeout: Seconds | None = None
    partial_outputs: Annotated[Literal["fail", "warn"], Field(
        description="When ComfyUI accepts the workflow with some outputs invalid (it runs the others): "
                    "'fail' the job with ComfyUI's node errors, or 'warn': complete it with a warning "
                    "naming each output that did not run.")] = "fail"
    images: Annotated[dict[str, Any] | None, Field(
        description="Input images: the name a LoadImage/LoadImageMask node uses -> a data URL or base64, an "
                    "http(s) URL, job:<job id>/<file name> (an earlier job's output) or an output's store URL; "
                    "or {\"image\": <source>, \"mask\": <source>} for an image with a mask; in a workflow step, "
                    "{\"$prev\": \"files.0.url\"} takes the previous step's output.")] = None

    @field_validator("workflow", mode="before")
    @classmethod
    def _api_format(cls, workflow: Any) -> Any:
        if not isinstance(workflow, dict) or not workflow:
            raise ValueError("'workflow' must be a non-empty object of node id -> {class_type, inputs}")
        if isinstance(workflow.get("nodes"), list) and "links" in workflow:
            raise ValueError("'workflow' is in ComfyUI's UI format; export it with 'Save (API)' to get "
                             "the API format (node id -> {class_type, inputs})")
        for node_id, node in workflow.items():
            if not isinstance(node, dict):
                raise ValueError(f"workflow node {node_id!r} must be an object with class_type and inputs")
            if not isinstance(node.get("class_type"), str) or not node["class_type"]:
                raise ValueError(f"workflow node {node_id!r} has no 'class_type' string")
            if "inputs" not in node:
                # ComfyUI 0.3.64 accepts it when no output needs the node, then its executor
                # thread dies on it (KeyError building cache keys): nothing runs until a restart.
                raise ValueError(f"workflow node {node_id!r} has no 'inputs' (give it \"inputs\": {{}}): ComfyUI "
                                 "would accept it and then stop running any prompt until restarted")
            if not isinstance(node["inputs"], dict):
                raise ValueError(f"workflow node {node_id!r} has 'inputs' that is not an object")
        return workflow


# -- a1111 ---------------------------------------------------------------------------------------
#: Fields jobqueue adds to the WebUI request itself: a payload may not set them.
A1111_OWNED = {
    "force_task_id": "jobqueue sets it to follow the job",
    "send_images": "jobqueue needs the images in the answer",
    "include_init_images": "jobqueue does not store input images",
}
#: Payload fields of jobqueue's own (not sent to the WebUI).
A1111_OWN_FIELDS = ("mode", "timeout", "stall_timeout", "node_timeout", "ui_limits")


def _number_from_string(kind: type) -> Any:
    """A numeric string as the number it spells, as the WebUI's models coerce it (pydantic 1
    and 2 alike: ``"20"`` is a step count, ``"7.5"`` a cfg scale; ``"7.5"`` is no integer)."""
    def convert(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return kind(value.strip())
            except ValueError:
                return value  # refused by the strict check, named as it was written
        return value
    return BeforeValidator(convert)


_A1111_TYPES: dict[str, Any] = {
    INT: int, FLOAT: float, STR: str, BOOL: bool, LIST: list[Any], STR_LIST: list[str], DICT: dict[str, Any],
}


def _a1111_annotation(kind: str, low: float | None, high: float | None) -> Any:
    """The type of one WebUI field: numbers from numeric strings, the limits as constraints."""
    kind_type = _A1111_TYPES.get(kind, Any)
    if kind == INT:
        return Annotated[int, Field(ge=low, le=high), _number_from_string(int)]
    if kind == FLOAT:
        return Annotated[float, Field(ge=low, le=high, allow_inf_nan=False), _number_from_string(float)]
    return Annotated[kind_type, Field(ge=low, le=high)] if (low, high) != (None, None) else kind_type


class A1111Payload(PayloadModel):
    """Base of the ``a1111`` models: jobqueue's own fields; the WebUI's come from its tables."""

    range_note: ClassVar[str] = " (the WebUI's UI limits; \"ui_limits\": false lifts them)"

    timeout: Seconds | None = None
    stall_timeout: Seconds | None = None
    node_timeout: Seconds | None = None
    ui_limits: Annotated[bool, Field(description="Check the WebUI's UI slider limits (steps <= 150, sides "
                                                 "64-2048, batch <= 8, cfg 1-30); false: only what it can run.")] = True


class A1111ApiPayload(A1111Payload):
    """Base of the models with only the limits of what the WebUI can run (``ui_limits: false``)."""

    range_note: ClassVar[str] = " (what the WebUI can run)"


def _a1111_model(mode: str, ranges: Mapping[str, tuple[float | None, float | None]],
                 base: type[A1111Payload]) -> type[A1111Payload]:
    """The ``mode`` request of the WebUI (Forge's fields, a superset of A1111's) as a model:
    each field's JSON type, null only where the WebUI's default is null, the ``ranges``."""
    fields: dict[str, Any] = {"mode": (Literal[mode], mode)}
    for name, (kind, default) in request_fields(mode, "forge").items():
        if name in A1111_OWNED:
            continue
        low, high = ranges.get(name, (None, None))
        annotation = _a1111_annotation(kind, low, high)
        fields[name] = (annotation | None if default is None else annotation, default)
    model: type[A1111Payload] = create_model(f"A1111{mode.capitalize()}Payload", __base__=base, **fields)
    return model


#: The ``a1111`` model of each mode (the default: UI limits checked).
A1111_MODELS: dict[str, type[A1111Payload]] = {mode: _a1111_model(mode, RANGES, A1111Payload) for mode in ROUTES}
#: The same with only what the WebUI can run (a payload's ``"ui_limits": false``).
A1111_API_MODELS: dict[str, type[A1111Payload]] = {
    mode: _a1111_model(mode, API_LIMITS, A1111ApiPayload) for mode in ROUTES}


# -- errors --------------------------------------------------------------------------------------
_NOUNS = {"int": ("an integer", "integers"), "float": ("a number", "numbers"), "bool": ("true or false", "booleans"),
          "string": ("a string", "strings"), "list": ("a list", "lists"), "dict": ("an object", "objects"),
          "model": ("an object", "objects"), "literal": ("one of the allowed values", "allowed values")}


def _noun(error_type: str) -> tuple[str, str] | None:
    return _NOUNS.get(error_type.split("_")[0]) if error_type.endswith(("_type", "_parsing", "_from_float",
                                                                       "_error")) else None


def _constraints(annotation: Any) -> list[Any]:
    """The annotated-types constraints anywhere in ``annotation`` (inside Optional too)."""
    found: list[Any] = []
    for meta in getattr(annotation, "__metadata__", ()):
        found += list(meta.metadata) if isinstance(meta, FieldInfo) else [meta]
    for arg in get_args(annotation):
        found += _constraints(arg)
    return found


def _bounds(model: type[PayloadModel], name: str) -> tuple[Any, Any]:
    field = model.model_fields.get(name)
    low = high = None
    if field is not None:
        for meta in [*field.metadata, *_constraints(field.annotation)]:
            if isinstance(meta, (Ge, Gt)):
                low = meta.ge if isinstance(meta, Ge) else meta.gt
            elif isinstance(meta, Le):
                high = meta.le
    return low, high


def _complaint(model: type[PayloadModel], error: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    loc = error["loc"]
    name = str(loc[0]) if loc else ""
    kind, value = error["type"], error["input"]
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if len(loc) >= 2 and isinstance(loc[1], int):  # an item of a list
        noun = _noun(kind)
        return f"'{name}' must be a list of {noun[1] if noun else 'valid items'}, got {payload.get(name)!r}"[:200]
    if len(loc) >= 2:
        name = ".".join(str(part) for part in loc)
    if value is None and kind != "missing":
        return f"'{name}' may not be null"
    if kind == "missing":
        return f"'{name}' is required"
    if kind in ("greater_than_equal", "less_than_equal"):
        low, high = _bounds(model, name)
        if low is not None and high is not None:
            return f"'{name}' must be between {low} and {high}{model.range_note}, got {value!r}"
        return f"'{name}' must be {'>=' if low is not None else '<='} {low if low is not None else high}, got {value!r}"
    if kind == "greater_than":
        return f"'{name}' must be a positive number of seconds, got {value!r}"
    if kind == "finite_number":
        return f"'{name}' must be a finite number, got {value!r}"
    noun = _noun(kind)
    if noun is not None:
        return f"'{name}' must be {noun[0]}, got {value!r}"[:200]
    return f"'{name}': {error['msg']}"


def describe(model: type[PayloadModel], exc: ValidationError, payload: Mapping[str, Any]) -> list[str]:
    """Every problem of ``exc``, one phrase each, unknown fields first and together."""
    errors = exc.errors()
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    expected = ", ".join(model.model_fields)
    problems = [f"unknown field(s) {unknown} (expected {expected})"] if unknown else []
    problems += [_complaint(model, e, payload) for e in errors if e["type"] != "extra_forbidden"]
    return problems


def check(model: type[M], service: str, payload: Any) -> M:
    """Validate ``payload`` with ``model``; raise :class:`InvalidPayloadError` naming every
    problem, prefixed with ``service``."""
    if not isinstance(payload, dict):
        raise InvalidPayloadError(f"{service}: payload must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidPayloadError(f"{service}: " + "; ".join(describe(model, exc, payload))) from None


# -- per-connector entry points ------------------------------------------------------------------
@remembered  # a worker sees the same few simulation payloads over and over
def validate_simulation(payload: Any) -> dict[str, Any]:
    """The ``simulation`` payload, normalised (defaults filled, ``step_seconds`` a float)."""
    model = check(SimulationPayload, "simulation", payload)
    return {
        "steps": model.steps,
        "step_seconds": float(model.step_seconds),
        "fail_at_step": model.fail_at_step,
        "output": model.output,
        **({"seed": model.seed} if "seed" in model.model_fields_set else {}),
        **({"files": [f.model_dump() for f in model.files]} if model.files else {}),
    }


def validate_comfyui(payload: Any) -> dict[str, Any]:
    """The ``comfyui`` payload: its workflow, the time limits given (as floats) and
    ``partial_outputs`` when given."""
    if isinstance(payload, dict) and "workflow" not in payload:
        payload = {**payload, "workflow": {}}  # one message for "absent" and "empty"
    model = check(ComfyUIPayload, "comfyui", payload)
    result: dict[str, Any] = {"workflow": model.workflow}
    for name in ("timeout", "stall_timeout", "node_timeout"):
        value = getattr(model, name)
        if value is not None:
            result[name] = float(value)
    if "partial_outputs" in model.model_fields_set:
        result["partial_outputs"] = model.partial_outputs
    try:
        images = check_images(model.workflow, model.images)
    except InputImageError as exc:
        raise InvalidPayloadError(f"comfyui: {exc}") from None
    if images:
        result["images"] = images
    return result


def validate_a1111(payload: Any) -> dict[str, Any]:
    """The ``a1111`` payload as written (numeric strings as the numbers they spell), with
    ``mode`` filled in and the time limits as floats; every problem named at once."""
    if not isinstance(payload, dict):
        raise InvalidPayloadError("a1111: payload must be a JSON object (the WebUI's txt2img/img2img request)")
    mode = payload.get("mode", "txt2img")
    if mode not in ROUTES:
        raise InvalidPayloadError(f"a1111: 'mode' must be one of {', '.join(ROUTES)}, got {mode!r}")
    model = (A1111_API_MODELS if payload.get("ui_limits") is False else A1111_MODELS)[mode]
    problems: list[str] = []
    known = all_field_names() | set(A1111_OWN_FIELDS)
    unknown = sorted(set(payload) - known)
    if unknown:
        problems.append(f"unknown field(s) {unknown} (not in the WebUI's request models)")
    checked: dict[str, Any] = {}
    for name, value in payload.items():
        if name in A1111_OWNED:
            problems.append(f"'{name}' may not be set: {A1111_OWNED[name]}")
        elif name in known and name not in model.model_fields:
            problems.append(f"'{name}' is not a {mode} field")
        elif name in model.model_fields:
            checked[name] = value
    parsed = None
    try:
        parsed = model.model_validate(checked)
    except ValidationError as exc:
        problems += describe(model, exc, checked)
    problems += _a1111_extra_problems(mode, payload)
    if problems or parsed is None:
        raise InvalidPayloadError("a1111: " + "; ".join(problems))
    result = dict(payload)
    result["mode"] = mode
    for name, value in payload.items():
        if isinstance(value, str) and name in model.model_fields and not isinstance(getattr(parsed, name), str):
            result[name] = getattr(parsed, name)  # "20" goes on as 20
    for name in ("timeout", "stall_timeout", "node_timeout"):
        if payload.get(name) is not None:
            result[name] = float(payload[name])
    return result


def _a1111_extra_problems(mode: str, payload: dict[str, Any]) -> list[str]:
    """What the models cannot say: img2img's images, the checkpoint override's type."""
    problems = []
    if mode == "img2img":
        images = payload.get("init_images")
        if not isinstance(images, list) or not images or not all(isinstance(i, str) and i for i in images):
            problems.append("img2img needs 'init_images': a non-empty list of base64 images (or data: URIs)")
    overrides = payload.get("override_settings")
    checkpoint = overrides.get("sd_model_checkpoint") if isinstance(overrides, dict) else None
    if checkpoint is not None and not isinstance(checkpoint, str):
        problems.append(f"'override_settings.sd_model_checkpoint' must be a string, got {checkpoint!r}")
    return problems


def schema_of(models: tuple[type[PayloadModel], ...], service: str) -> dict[str, Any]:
    """The JSON schema of a payload with these models: the one model's, ``oneOf`` several
    (``a1111``'s modes), any JSON object for none."""
    if not models:
        return {"title": f"{service} payload", "type": "object"}
    if len(models) == 1:
        return models[0].model_json_schema()
    return {"title": f"{service} payload", "oneOf": [m.model_json_schema() for m in models]}
