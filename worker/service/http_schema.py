"""What the HTTP API (``worker.service.http``) reads and answers: the request and response bodies its
OpenAPI description is made of, and its one error shape, ``{"error": {"code", "message"}}``.
"""

from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from worker.core.decide import DecidedBy
from worker.core.outgoing import Decision
from worker.core.ports import Stage
from worker.service.direct import CHECK_ID


class CheckRequest(BaseModel):
    """A post to check. ``tenant`` defaults to the key's; ``id`` (optional) is the post's own id when it
    is an edit of a stored post: a post never matches itself."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=1)
    tenant: str | None = None
    id: str | None = Field(default=None, min_length=1)


class DocumentRequest(BaseModel):
    """A post to check and add to the tenant's index."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    tenant: str | None = None
    created_at: str | None = Field(default=None, description="ISO-8601")


class VerdictRequest(BaseModel):
    """A moderator's verdict on a flag (README, "Moderators' verdicts"); ``tenant`` defaults to the key's,
    ``at`` to now. Texts are optional: without them the pair is found in the index."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1)
    duplicate_of: str = Field(min_length=1)
    verdict: Literal["duplicate", "not_duplicate"]
    tenant: str | None = None
    at: str | None = Field(default=None, description="ISO-8601")
    reviewer: str | None = None
    text: str | None = None
    duplicate_text: str | None = None


class VerdictOut(BaseModel):
    remembered: Literal[True] = True
    points: dict[str, float] = Field(description="Decision points this verdict moved, by tenant.")


class MatchOut(BaseModel):
    id: str
    score: float


class DecisionOut(BaseModel):
    """The decision, as on the stream's ``decisions`` topic (without the Kafka source)."""

    id: str
    tenant: str
    flagged: bool
    duplicate_of: str | None
    score: float | None
    probability: float | None
    matches: list[MatchOut]
    stage: Stage | None
    decided_by: DecidedBy | None
    verifier_score: float | None
    model: str
    added: bool = Field(description="The post was added to the index (POST /v1/documents).")


class Deleted(BaseModel):
    tenant: str
    id: str
    deleted: Literal[True] = True


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


def decision_out(decision: Decision, *, added: bool) -> DecisionOut:
    fields = decision.model_dump(exclude={"source"})
    if not added and fields["id"] == CHECK_ID:
        fields["id"] = ""
    return DecisionOut(**fields, added=added)


class ApiError(HTTPException):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message)
        self.code = code


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
