"""Replays the fuzzing corpus (`tests/fuzz/corpus`, grown by ``python -m tests.fuzz``) through the fuzz
target: deterministic, no atheris needed, so an input that once broke an invariant stays fixed."""

from __future__ import annotations

from pathlib import Path

from tests.fuzz._target import check_one

CORPUS = Path(__file__).parents[1] / "fuzz" / "corpus"


def test_every_corpus_input_keeps_every_invariant() -> None:
    paths = sorted(CORPUS.iterdir())
    assert len(paths) >= 25  # the hand-written seeds, at least
    failures = []
    for path in paths:
        try:
            check_one(path.read_bytes())
        except Exception as exc:  # noqa: BLE001: report every failing input, not the first
            failures.append(f"{path.name}: {type(exc).__name__}: {exc!s:.200}")
    assert not failures, "\n".join(failures)
