"""Prompt validation with ComfyUI's rules and error bodies (``execution.validate_prompt``).

The result mirrors ComfyUI's tuple: ``(ok, error, good_outputs, node_errors)``; the server
answers 400 with ``{"error": error, "node_errors": node_errors}`` when ``ok`` is False.
"""

from __future__ import annotations

import traceback
from typing import Any

from jobqueue.sims.comfyui.nodes import NODES, NodeDef

Validated = dict[str, tuple[bool, list[dict[str, Any]], str]]
_CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _error(kind: str, message: str, details: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra or {}}


def _class_of(prompt: dict[str, Any], node_id: Any) -> NodeDef:
    return NODES[prompt[node_id]["class_type"]]


def validate_inputs(prompt: dict[str, Any], unique_id: str, validated: Validated,
                    folders: dict[str, str] | None = None) -> tuple[bool, list[dict[str, Any]], str]:
    """Validate one node and, through its links, everything upstream (memoised in ``validated``).

    Like ComfyUI, a dangling link raises (KeyError) and the caller reports it as an
    ``exception_during_validation``; converted literals are written back into the prompt.
    """
    if unique_id in validated:
        return validated[unique_id]
    inputs = prompt[unique_id]["inputs"]  # KeyError without inputs: the caller reports it, as ComfyUI
    node_def = _class_of(prompt, unique_id)
    errors: list[dict[str, Any]] = []
    valid = True
    for name in [*node_def.required, *node_def.optional]:
        category, spec = node_def.input_spec(name) or ("optional", ["*"])
        if name not in inputs:
            if category == "required":
                errors.append(_error("required_input_missing", "Required input is missing", name, {"input_name": name}))
            continue
        if isinstance(inputs[name], list):
            error, upstream_ok = _check_link(prompt, name, spec, inputs[name], validated, folders)
            valid = valid and upstream_ok
        elif name in node_def.validated:
            error = None  # VALIDATE_INPUTS takes it: no combo or range check (ComfyUI skips them)
        else:
            error = _check_literal(inputs, name, spec)
        if error is not None:
            errors.append(error)
    errors += _custom_validation(node_def, inputs, folders or {})
    result = (not errors and valid, errors, unique_id)
    validated[unique_id] = result
    return result


def _custom_validation(node_def: NodeDef, inputs: dict[str, Any], folders: dict[str, str]) -> list[dict[str, Any]]:
    """The node's ``VALIDATE_INPUTS`` answer as ComfyUI files it: one ``custom_validation_failed``
    per input the function takes, ``details`` ``"<input> - <message>"``."""
    if node_def.validate is None:
        return []
    taken = {name: inputs[name] for name in node_def.validated if name in inputs}
    answer = node_def.validate(folders, taken)
    if answer is True:
        return []
    return [_error("custom_validation_failed", "Custom validation failed for node",
                   name if answer is False else f"{name} - {answer}", {"input_name": name}) for name in taken]


def _config(spec: list[Any]) -> tuple[Any, dict[str, Any], list[Any]]:
    """An input's type, its options (``min``, ``max``...) and the ``input_config`` errors show."""
    input_type = spec[0]
    extra = spec[1] if len(spec) > 1 else {}
    return input_type, extra, [input_type, extra] if extra else [input_type]


def _check_link(prompt: dict[str, Any], name: str, spec: list[Any], val: list[Any],
                validated: Validated, folders: dict[str, str] | None) -> tuple[dict[str, Any] | None, bool]:
    """A linked input: the link's own error (or None), and whether the upstream node is valid
    (validated first, recursively)."""
    input_type, _, info = _config(spec)
    if len(val) != 2:
        return _error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                      name, {"input_name": name, "input_config": info, "received_value": val}), True
    upstream = _class_of(prompt, val[0])  # KeyError for a missing node, as in ComfyUI
    slot = val[1]
    received = upstream.outputs[slot] if isinstance(slot, int) and 0 <= slot < len(upstream.outputs) else None
    if received != input_type and input_type != "*" and received != "*":  # ComfyUI's validate_node_input
        return _error("return_type_mismatch", "Return type mismatch between linked nodes",
                      f"{name}, received_type({received}) mismatch input_type({input_type})",
                      {"input_name": name, "input_config": info, "received_type": received,
                       "linked_node": val}), True
    try:
        return None, validate_inputs(prompt, str(val[0]), validated, folders)[0]
    except Exception as exc:
        # ComfyUI files this under the *linked* node (the one holding the bad link),
        # not under the node being validated, whose own error list stays empty.
        reasons = [_error("exception_during_inner_validation", "Exception when validating inner node",
                          str(exc), {"input_name": name, "input_config": info,
                                     "exception_message": str(exc), "exception_type": type(exc).__name__,
                                     "traceback": traceback.format_tb(exc.__traceback__),
                                     "linked_node": val})]
        validated[str(val[0])] = (False, reasons, str(val[0]))
        return None, False


def _check_literal(inputs: dict[str, Any], name: str, spec: list[Any]) -> dict[str, Any] | None:
    """A literal input: one of a combo's options, or converted to its type (written back) and
    within its ``min``/``max``; the first error, or None."""
    input_type, extra, info = _config(spec)
    val = inputs[name]
    if isinstance(input_type, list):  # a combo (e.g. ckpt_name): only one of its options
        if val in input_type:
            return None
        # Like ComfyUI: long option lists (model files) are not sent back.
        listed = f"(list of length {len(input_type)})" if len(input_type) > 20 else str(input_type)
        return _error("value_not_in_list", "Value not in list", f"{name}: '{val}' not in {listed}",
                      {"input_name": name, "input_config": None if len(input_type) > 20 else info,
                       "received_value": val})
    convert = _CONVERT.get(input_type)
    if convert is not None:
        try:
            val = convert(val)
            inputs[name] = val
        except Exception as exc:
            return _error("invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                          f"{name}, {val}, {exc}", {"input_name": name, "input_config": info,
                                                    "received_value": val, "exception_message": str(exc)})
    if "min" in extra and val < extra["min"]:
        return _error("value_smaller_than_min", f"Value {val} smaller than min of {extra['min']}", name,
                      {"input_name": name, "input_config": info, "received_value": val})
    if "max" in extra and val > extra["max"]:
        return _error("value_bigger_than_max", f"Value {val} bigger than max of {extra['max']}", name,
                      {"input_name": name, "input_config": info, "received_value": val})
    return None


def _missing_class(node_id: str, node: dict[str, Any], newer: bool) -> dict[str, Any]:
    """The error for a node without ``class_type`` or with one ComfyUI does not know."""
    class_type = node.get("class_type")
    if not newer:
        if class_type is None:
            return _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                          f"Node ID '#{node_id}'")
        return _error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                      f"Node ID '#{node_id}'")
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, dict) else None
    extra = {"node_id": node_id, "class_type": class_type, "node_title": title if class_type is None else title or class_type}
    if class_type is None:
        return _error("missing_node_type", f"Node '{title or f'ID #{node_id}'}' has no class_type. The workflow may "
                      "be corrupted or a custom node is missing.", f"Node ID '#{node_id}'", extra)
    return _error("missing_node_type", f"Node '{title or class_type}' not found. The custom node may not be installed.",
                  f"Node ID '#{node_id}'", extra)


def validate_prompt(prompt: Any, newer: bool = False, folders: dict[str, str] | None = None,
                    ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
    """Validate a whole API-format prompt the way ``POST /prompt`` does (``newer``: as ComfyUI
    after 0.3.64, which reports an unknown node as ``missing_node_type``; ``folders``: the
    server's input/output/temp folders, for ``LoadImage``'s file check)."""
    if not isinstance(prompt, dict):
        return False, _error("invalid_prompt", "Cannot execute because the prompt is not an object.", ""), [], {}
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or node["class_type"] not in NODES:
            return False, _missing_class(node_id, node if isinstance(node, dict) else {}, newer), [], {}
        if not isinstance(node.get("inputs", {}), dict):
            return False, _error("invalid_prompt", "Cannot execute because a node has invalid inputs.",
                                 f"Node ID '#{node_id}'"), [], {}
        if NODES[node["class_type"]].output_node:
            outputs.append(node_id)
    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs"), [], {}
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    validated: Validated = {}
    for out in outputs:
        try:
            ok, reasons, _ = validate_inputs(prompt, out, validated, folders)
        except Exception as exc:
            ok = False
            reasons = [_error("exception_during_validation", "Exception when validating node", str(exc),
                              {"exception_type": type(exc).__name__, "traceback": traceback.format_tb(exc.__traceback__)})]
            validated[out] = (False, reasons, out)
        if ok:
            good.append(out)
            continue
        if reasons:
            failed.append((out, reasons))
        for node_id, (node_ok, node_reasons, _) in validated.items():
            if not node_ok and node_reasons:
                entry = node_errors.setdefault(node_id, {"errors": node_reasons, "dependent_outputs": [],
                                                         "class_type": prompt[node_id]["class_type"]})
                entry["dependent_outputs"].append(out)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errs in failed for e in errs)
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), [], node_errors
    return True, None, good, node_errors
