"""Coverage-guided fuzzing of the frame decoder, the parent's id decoder and the book apply (atheris).

    pip install -e '.[fuzz]'
    python -m tests.fuzz [--seconds 300] [--corpus tests/fuzz/corpus]

Inputs that reach new code are added to the corpus directory; one that breaks an invariant (an exception
other than `MessageError` out of decode or apply, a book out of order) is written as ``crash-*`` to
``.fuzz/`` and ends the run. CI replays the committed corpus through the same target without atheris
(`tests/unit/test_fuzz_corpus.py`), so a fixed crash stays fixed.
"""
