"""The HTTP API's bodies, and the error format every rejected request gets.

The request models are built from the deployment's :class:`RequestLimits`, so the limits are checked in
the same pass as the types and show up in the OpenAPI schema at ``/docs``. Unknown fields are rejected:
a misspelled ``histroy`` would otherwise be dropped and the request silently scored with the stored
history instead of the one the client sent.
"""

from typing import Annotated, Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from dien.serve.config import RequestLimits


def score_request_model(limits: RequestLimits) -> type[BaseModel]:
    """The ``POST /v1/score`` body model for these limits."""
    Token = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_id_chars)]

    class Behavior(BaseModel):
        """One item with its category."""

        model_config = ConfigDict(extra="forbid")
        item_id: Token
        category: Token

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: Token | None = Field(
            None, description="The user; their stored history is used unless `history` is given. "
                              "Required when `history` is not given.")
        history: list[Behavior] | None = Field(
            None, max_length=limits.max_history,
            description="The user's behaviors, oldest first; only the model's max_len most recent are used. "
                        "Overrides the stored history; [] scores without history.")
        candidates: list[Behavior] = Field(
            min_length=1, max_length=limits.max_candidates, description="Items to score, in response order.")

    return ScoreRequest


class ModelRef(BaseModel):
    name: str
    version: str


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="Click probabilities in the order of the request's candidates.")
    model: ModelRef = Field(description="The model that scored.")
    history_length: int = Field(description="Behaviors the model saw (0: an unknown user or an empty history).")
    unknown_candidates: list[int] = Field(
        default_factory=list, description="Positions (0-based) of the candidates whose item the model has never "
                                          "seen; they score as the out-of-vocabulary item, near the base rate.")


class FieldError(BaseModel):
    field: str = Field(description="Where in the request, e.g. `candidates[3].item_id`; `body` for the whole.")
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(description="Every problem in one line.")
    detail: list[FieldError]


def field_path(loc: Sequence[Any]) -> str:
    """A pydantic/FastAPI error location as a path: ("body", "candidates", 3, "item_id") -> candidates[3].item_id."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def describe(error: dict[str, Any]) -> FieldError:
    """One FastAPI validation error as a :class:`FieldError` with a message a client can act on."""
    if error["type"] == "json_invalid":
        return FieldError(field="body", message=f"not valid JSON: {error.get('ctx', {}).get('error', error['msg'])} "
                                                f"at character {error['loc'][-1]}")
    if isinstance(error.get("input"), (bytes, bytearray)):
        # FastAPI hands over the raw bytes when the Content-Type is not JSON.
        return FieldError(field="body", message="expected a JSON object sent with Content-Type: application/json")
    path = field_path(error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return FieldError(field=path, message=message)


def error_response_body(errors: list[FieldError]) -> dict[str, Any]:
    return ErrorResponse(error="; ".join(f"{e.field}: {e.message}" for e in errors), detail=errors).model_dump()
