"""The API's one error shape, ``{"error": {"code", "message"}}`` with its status.

Its own module, below every route module: the access check and the rate limiter answer in
this shape too, and the API's routes need them, so neither imports the API for it.
"""

from __future__ import annotations

from flask import Response, jsonify


def error_response(status: int, code: str, message: str) -> Response:
    """A JSON error response: ``{"error": {"code": code, "message": message}}`` with ``status``."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response
