"""Model providers: local, OpenAI and compatible servers, Anthropic, resilience, prices.

`local` runs llama.cpp in-process (models from the PyPI catalog); `openai` and `anthropic` speak
to hosted APIs through the official SDKs; `resilience` wraps any of them with retries, timeouts,
a cache, a concurrency limit and fallback chains.
"""

import json
import os
from typing import Any

from ..errors import ConfigError


def timeout_from_env(default: float = 60.0) -> float:
    """Seconds a hosted model call may take: `$CADENZA_MODEL_TIMEOUT`, else `default`.

    CPU-bound servers (llama.cpp, Ollama on a laptop) may need minutes for a long prompt.

    Raises:
        ConfigError: the variable is not a positive number.

    """
    raw = os.environ.get("CADENZA_MODEL_TIMEOUT")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(f"CADENZA_MODEL_TIMEOUT must be a number of seconds > 0, not {raw!r}")
    return value


def with_schema_hint(
    messages: list[dict[str, Any]], schema: dict[str, Any]
) -> list[dict[str, Any]]:
    """`messages` with the JSON Schema the answer must match added to the system message.

    For local models and servers whose JSON mode does not show the schema to the model.
    """
    hint = "Reply with only a JSON value matching this JSON Schema: " + json.dumps(schema)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{hint}"}, *messages[1:]]
    return [{"role": "system", "content": hint}, *messages]
