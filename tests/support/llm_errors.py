"""Error answers of hosted chat APIs, as they send them: status and JSON body.

The stand-in server (``support/llm_server.py``) replays these, so the backends are tested on
the answers they get from the real services. Each body is copied from answers the services gave
to users (quoted in public bug reports and logs); ``{...}`` marks where they name the model,
the user or a value of the request.

Hugging Face's router (``https://router.huggingface.co/v1/chat/completions``):

* a model that no enabled provider serves: 400 with an OpenAI-style error object (as a
  ``huggingface_hub`` ``BadRequestError`` prints it; the same sentence in cline/cline#5098,
  vercel/ai#7788), or with the sentence alone;
* a model a named provider does not serve (huggingface/huggingface.js#2225);
* a token that is not valid: 401 (``huggingface_hub``'s own error handling compares this
  sentence); a token without the "Make calls to Inference Providers" permission: 403;
* no credits left: 402.

OpenAI (``https://api.openai.com/v1/chat/completions``):

* ``max_tokens`` to a reasoning model (o-series, gpt-5): 400 ``unsupported_parameter``
  (microsoft/vscode-copilot-release#9954, sipeed/picoclaw#16);
* a ``temperature`` other than 1 to a reasoning model: 400 ``unsupported_value``
  (johny-b/llmcomp#69, gabrii/Cursor-Azure-GPT-5#33, QwenLM/qwen-code#921), or
  ``unsupported_parameter`` from o3-mini (BeehiveInnovations/pal-mcp-server#78);
* a model that does not exist or the key cannot use: 404 ``model_not_found``
  (rd-1-2022/ai-openai-helloworld#9);
* a wrong key: 401 ``invalid_api_key`` (the key shown masked);
* an account without quota: 429 ``insufficient_quota``, which waiting does not fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    body: dict[str, Any]


def hf_model_not_supported(model: str) -> ErrorAnswer:
    return ErrorAnswer(
        400,
        {
            "error": {
                "message": f"The requested model '{model}' is not supported by any provider "
                "you have enabled.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_supported",
            }
        },
    )


def hf_model_not_supported_text(model: str) -> ErrorAnswer:
    return ErrorAnswer(
        400,
        {
            "error": f"The requested model '{model}' is not supported by any provider you have "
            "enabled."
        },
    )


HF_MODEL_NOT_BY_PROVIDER = ErrorAnswer(400, {"error": "Model not supported by provider together"})
HF_INVALID_TOKEN = ErrorAnswer(401, {"error": "Invalid credentials in Authorization header"})
HF_TOKEN_WITHOUT_PERMISSION = ErrorAnswer(
    403,
    {
        "error": "This authentication method does not have sufficient permissions to call "
        "Inference Providers on behalf of user someone"
    },
)
HF_NO_CREDITS = ErrorAnswer(
    402,
    {
        "error": "You have exceeded your monthly included credits for Inference Providers. "
        "Subscribe to PRO to get 20x more monthly included credits."
    },
)

OPENAI_MAX_TOKENS = ErrorAnswer(
    400,
    {
        "error": {
            "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "unsupported_parameter",
        }
    },
)


def openai_temperature_value(value: float) -> ErrorAnswer:
    return ErrorAnswer(
        400,
        {
            "error": {
                "message": f"Unsupported value: 'temperature' does not support {value:g} with "
                "this model. Only the default (1) value is supported.",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "unsupported_value",
            }
        },
    )


OPENAI_TEMPERATURE_PARAMETER = ErrorAnswer(
    400,
    {
        "error": {
            "message": "Unsupported parameter: 'temperature' is not supported with this model.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "unsupported_parameter",
        }
    },
)


def openai_model_not_found(model: str) -> ErrorAnswer:
    return ErrorAnswer(
        404,
        {
            "error": {
                "message": f"The model `{model}` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        },
    )


def openai_invalid_key(masked: str) -> ErrorAnswer:
    return ErrorAnswer(
        401,
        {
            "error": {
                "message": f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
    )


OPENAI_NO_QUOTA = ErrorAnswer(
    429,
    {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing "
            "details.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    },
)
