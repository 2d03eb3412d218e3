"""What flows between stages: candidate texts with their scores."""

from __future__ import annotations

from dataclasses import dataclass

SUBJECT_KINDS = ("caption", "subject")


@dataclass(slots=True)
class Candidate:
    """One candidate text and its scores (plain slots: tens of thousands are made per batch, and a frozen
    dataclass's constructor costs several times more)."""

    text: str
    kind: str
    source: str
    index: str
    row: int
    retrieval_score: float
    rerank_score: float | None = None

    @property
    def score(self) -> float:
        return self.rerank_score if self.rerank_score is not None else self.retrieval_score

    def with_rerank(self, score: float) -> "Candidate":
        return Candidate(self.text, self.kind, self.source, self.index, self.row, self.retrieval_score, score)

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "kind": self.kind,
            "source": self.source,
            "index": self.index,
            "retrieval_score": round(self.retrieval_score, 6),
            "rerank_score": None if self.rerank_score is None else round(self.rerank_score, 6),
        }


Candidates = dict[str, list[Candidate]]  # kind -> candidates, best first


def best_subject(candidates: Candidates) -> Candidate | None:
    """The best caption or subject: the retrieval-only answer and the {subject} of the templates."""
    subjects = [c for k in SUBJECT_KINDS for c in candidates.get(k, [])]
    return max(subjects, key=lambda c: c.score) if subjects else None


def best_of_all(candidates: Candidates) -> Candidate | None:
    return max((c for cs in candidates.values() for c in cs), key=lambda c: c.score, default=None)
