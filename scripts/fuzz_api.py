"""schemathesis against the control API with a bigger, random budget than CI's, printing
totals: operations, requests per operation and status, failures. See tests/api_fuzz.py for
what runs (the real app and Node in-process, token set) and which checks apply.

    scripts/fuzz_api                         # 500 cases per operation and mode, random seed
    scripts/fuzz_api --examples 2000 --seed 3
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from api_fuzz import fuzz_api, start_node  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=500, help="cases per operation and mode")
    ap.add_argument("--seed", type=int, help="hypothesis seed (default: a random one)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    logging.disable(logging.WARNING)  # every refused token is logged; the totals say enough
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node(Path(tmp))
        try:
            totals = fuzz_api(node, args.examples, seed=seed, raise_failures=False)
        finally:
            node.close()
    elapsed = time.perf_counter() - t0
    print(f"API fuzz: seed {seed}, up to {args.examples} cases per operation and mode")
    for label, statuses in totals.statuses.items():
        shown = ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))
        print(f"  {label:<38} {sum(statuses.values()):>6} requests  ({shown})")
    server_errors = sum(n for s in totals.statuses.values() for c, n in s.items() if c >= 500)
    print(f"operations:       {totals.operations}")
    print(f"cases (requests): {totals.requests}")
    print(f"5xx responses:    {server_errors}")
    print(f"failures:         {len(totals.failures)}")
    if totals.no_negative:
        print(f"(no negative cases exist for: {', '.join(totals.no_negative)})")
    print(f"time:             {elapsed:.1f} s")
    for failure in totals.failures:
        print("\n" + failure)
    return 1 if totals.failures or server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
