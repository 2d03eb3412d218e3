"""Response shapes of the HTTP API (they appear in the OpenAPI docs)."""

from __future__ import annotations

from pydantic import BaseModel


class CandidateOut(BaseModel):
    text: str
    kind: str
    source: str
    index: str
    retrieval_score: float
    rerank_score: float | None


class InterrogateOut(BaseModel):
    prompt: str
    mode: str
    alternatives: list[str]
    negative_prompt: str
    retrieval_prompt: str
    embedding: list[float] | None = None
    candidates: list[CandidateOut]
    timings_ms: dict[str, float]
    profile: str
    models: dict[str, str]
    index_ids: dict[str, str]
    source: str  # "metadata" (the prompt the file records) or "interrogation"
    generator: str | None = None  # with source=metadata: the tool that recorded it
    settings: dict | None = None  # with source=metadata: the recorded settings
    recorded_in: str | None = None  # with source=metadata: png:parameters, exif:UserComment ...
    interrogated_prompt: str | None = None  # with source=metadata: what interrogation answered
    image_sha256: str | None = None  # of the uploaded bytes: what POST /v1/feedback names the image by


class FeedbackOut(BaseModel):
    id: int
    image_kept: bool


class BatchItemOut(BaseModel):
    filename: str
    result: InterrogateOut | None = None
    error: dict | None = None


class BatchOut(BaseModel):
    results: list[BatchItemOut]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody
