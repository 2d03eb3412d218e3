"""Configuration as data: the one pydantic base for profiles and manifests, and how their errors read."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """Frozen, and unknown keys are errors (a typo in a profile or manifest is caught, not ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def format_validation_error(err: ValidationError) -> str:
    """Every problem on one line, "; " between them: where it is (dotted path) and what is wrong (an error
    message stays one line: the CLI escapes newlines)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in err.errors())
