"""``python -m benchmarks [--quick] [--reps N] [--n N] [--json PATH] [--only KEY ...]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.harness import (
    DEFAULT_PG,
    SCENARIOS,
    Config,
    report_json,
    requests_report,
    run,
    settings_report,
    table,
)

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: tiny N, one repetition, no PostgreSQL")
    parser.add_argument("--reps", type=int, help="repetitions (default 5)")
    parser.add_argument("--n", type=int, help="sequential orders per side (default 500)")
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json",
                        help="where to write the JSON results (default benchmarks/results/"
                             "latest.json)")
    parser.add_argument("--postgres-url", default=DEFAULT_PG,
                        help=f"PostgreSQL for the PG scenarios (default {DEFAULT_PG})")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PG scenarios")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=(),
                        help="run only these scenarios")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target is missed (full runs only)")
    args = parser.parse_args(argv)

    cfg = Config.quick_mode() if args.quick else Config()
    if args.reps is not None:
        cfg.reps = args.reps
    if args.n is not None:
        cfg.n = args.n
    if not args.quick:
        cfg.postgres_url = None if args.no_postgres else args.postgres_url
    cfg.only = tuple(args.only)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    scenarios = run(cfg, log)
    data = report_json(cfg, scenarios)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    machine = data["machine"]
    print(f"\nmachine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
          f"ccxt {machine['ccxt']}, SQLAlchemy {machine['sqlalchemy']}, "
          f"SQLite {machine['sqlite']}; {cfg.reps} repetition(s)\n")
    print(table(scenarios))
    print("\nsettings:\n" + settings_report(scenarios))
    print("\nrequests seen by the fake server (first repetition):\n"
          + requests_report(scenarios))
    print(f"\nJSON: {args.json}")
    missed = [sc.key for sc in scenarios.values() if sc.verdict() == "MISSED"]
    if args.check and not args.quick and missed:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
