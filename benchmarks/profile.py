"""Profile one side of one scenario with pyinstrument: ``python -m benchmarks.profile SIDE``.

SIDE is ``floor-seq``, ``bagbot-seq``, ``bagbot-conc``, ``floor-conc``, ``paper`` or
``insert``. Prints pyinstrument's text tree (``--html PATH`` writes the HTML page too).
Needs ``pip install pyinstrument``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from benchmarks import harness


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("side", choices=["floor-seq", "bagbot-seq", "floor-conc", "bagbot-conc",
                                         "paper", "insert"])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--html", type=Path)
    parser.add_argument("--interval", type=float, default=0.0005)
    args = parser.parse_args()

    from pyinstrument import Profiler

    from bagbot_core import audit

    cfg = harness.Config(n=args.n, conc_total=args.n)
    with tempfile.TemporaryDirectory(prefix="bagbot-profile-") as tmp, \
            open(Path(tmp) / "audit.jsonl", "a") as audit_file:
        audit.configure(fmt="json", stream=audit_file, force=True)
        dbs = harness.Databases(Path(tmp), None)
        server = harness.FakeServerProcess() if args.side not in ("paper", "insert") else None
        try:
            if server is not None:
                server.set_latency(args.latency)
            sides = {
                "floor-seq": lambda: harness.floor_sequential(cfg, server, dbs.sqlite()),
                "bagbot-seq": lambda: harness.bagbot_sequential(cfg, server, dbs.sqlite()),
                "floor-conc": lambda: harness.floor_concurrent(cfg, server, dbs.sqlite()),
                "bagbot-conc": lambda: harness.bagbot_concurrent(cfg, server, dbs.sqlite()),
                "paper": lambda: harness.bagbot_paper(cfg, dbs.sqlite()),
                "insert": lambda: harness.insert_only(cfg, dbs.sqlite()),
            }
            profiler = Profiler(interval=args.interval, async_mode="disabled")
            with profiler:
                sample = asyncio.run(sides[args.side]())
            print(profiler.output_text(unicode=True, color=False, show_all=False))
            if args.html:
                args.html.write_text(profiler.output_html())
            print(f"{args.side}: median {sample.median * 1e3:.3f} ms, p99 "
                  f"{sample.p99 * 1e3:.3f} ms, {sample.throughput:.0f}/s, {sample.requests}")
        finally:
            if server is not None:
                server.close()


if __name__ == "__main__":
    main()
