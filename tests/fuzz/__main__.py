"""``python -m tests.fuzz``: see the package docstring."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["pool", "models"]):
    from tests.fuzz._target import check_one

CORPUS = Path(__file__).parent / "corpus"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=300, help="how long to fuzz")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="seed inputs; new finds are added here")
    args, libfuzzer = parser.parse_known_args()
    artifacts = Path(".fuzz")
    artifacts.mkdir(exist_ok=True)
    atheris.Setup(
        [
            sys.argv[0],
            *libfuzzer,
            f"-max_total_time={args.seconds}",
            f"-artifact_prefix={artifacts}/",
            str(args.corpus),
        ],
        check_one,
    )
    atheris.Fuzz()


if __name__ == "__main__":
    main()
