"""JSON request bodies checked at the door, for the API and the page alike: a body that is not
well-formed JSON, nests deeper than a request ever needs, or carries text that is not valid
Unicode (a lone surrogate such as ``"\\ud800"``) is the client's mistake, a 400 before any work.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ragqa.api.errors import ApiError, bad_request

MAX_DEPTH = 32  # a chat request nests 5 deep (body, messages, message, content parts, part)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is over {limit // (1024 * 1024) or 1} MB", code="request_too_large")


def parse_json(body: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``body`` parsed, or a 400 in one line saying what is wrong with it.

    >>> parse_json(b'{"a": [1, "x"]}')
    {'a': [1, 'x']}
    >>> parse_json(b'[' * 100 + b']' * 100)
    Traceback (most recent call last):
    ...
    ragqa.api.errors.ApiError: the body nests deeper than 32 levels
    """
    try:
        data = json.loads(body)
    except RecursionError:
        raise bad_request(f"the body nests deeper than {max_depth} levels", code="too_deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON ({exc})", code="invalid_json") from None
    _check(data, max_depth, body)
    return data


# a lone surrogate can only arrive as a JSON escape (UTF-8 bytes cannot encode one)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]", re.ASCII)


def _check(data: Any, max_depth: int, body: bytes) -> None:
    """No deeper than ``max_depth``, and every string (keys too) valid Unicode: JSON lets
    ``\ud800`` through, UTF-8 cannot. One pass over the containers, no recursion; strings are
    read only when the body holds a surrogate escape at all."""
    strings = bool(_SURROGATE_ESCAPE.search(body))
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise bad_request(f"the body nests deeper than {max_depth} levels", code="too_deep")
            if strings:
                for key in item:
                    _valid(key)
            stack.extend((value, depth + 1) for value in item.values() if not isinstance(value, (int, float)))
        elif isinstance(item, list):
            if depth > max_depth:
                raise bad_request(f"the body nests deeper than {max_depth} levels", code="too_deep")
            stack.extend((value, depth + 1) for value in item if not isinstance(value, (int, float)))
        elif strings and isinstance(item, str):
            _valid(item)


def _valid(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("the body holds text that is not valid Unicode (a lone surrogate such as \\ud800)",
                          code="invalid_unicode") from None
