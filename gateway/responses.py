"""The gateway's JSON responses: orjson, one trailing newline (curl prints
the prompt on its own line), application/json."""

import orjson
from flask import current_app


def json_response(body, status: int = 200, headers: dict[str, str] | None = None):
    response = current_app.response_class(
        orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE), status=status, mimetype="application/json"
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
