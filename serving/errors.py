"""OpenAI-shaped errors: every failure leaves the gateway as the same JSON object.

The shape is vLLM's `ErrorResponse` (`{"error": {"message", "type", "param", "code"}}`),
the one the `openai` SDK parses into `APIStatusError` subclasses.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi.responses import JSONResponse

from serving.store import faults

_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    413: "RequestTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    """Raised anywhere in the gateway's levers; rendered by `error_response`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        code: str | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}
        #: OpenAI's string code and type where a client acts on them: 429s are
        #: `insufficient_quota` (stop) or `rate_limit_exceeded` of type `requests` or
        #: `tokens` (retry later). Other errors: the class name and the status.
        self.code = code
        self.type = type_ or code


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None,
    type_: str | None = None,
) -> dict:
    return {
        "error": {
            "message": message,
            "type": type_ or code or _TYPES.get(
                status, HTTPStatus(status).phrase.replace(" ", "") + "Error"),
            "param": param,
            "code": code or status,
        }
    }


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(
        error_body(error.status, error.message, error.param, error.code, error.type),
        status_code=error.status,
        headers=error.headers,
    )


def store_unavailable(exc: faults.StoreUnavailable) -> APIError:
    """A full or read-only store: 503, `Retry-After`, code `store_unavailable`, and a
    message that says which (the client's data is not lost; its write was refused)."""
    return APIError(503, str(exc), code=faults.CODE, type_=_TYPES[503],
                    headers={"Retry-After": str(faults.RETRY_AFTER_S)})
