"""Chaos runs on real processes: the long versions of ``tests/support/chaos.py``'s scenarios.

``.venv/bin/python -m bench.chaos [--short] [--only 1,3] [--keep]`` from the repo root. Each
scenario starts its own redis-server and Celery processes and prints what it injected and found;
the exit status is non-zero when a promise broke. ``--short`` runs what ``pytest -m chaos`` runs.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from tests.support.chaos import SCENARIOS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--short", action="store_true", help="the short versions (as in CI)")
    parser.add_argument("--only", default="1,2,3,4,5", help="scenario numbers, comma-separated")
    parser.add_argument(
        "--keep", action="store_true", help="keep the logs (default: only when a scenario failed)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    print(f"chaos: {'short' if args.short else 'long'} run, logs in {workdir}")
    reports = []
    for n in (int(x) for x in args.only.split(",")):
        report = SCENARIOS[n](workdir / f"s{n}", args.short)
        report.print()
        reports.append(report)
    failed = [r.scenario for r in reports if r.problems]
    if not failed and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{len(reports) - len(failed)} of {len(reports)} scenarios held"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
