"""A simulated Buddy API in its own process, so its CPU never mixes with the measured side."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Iterator

from exporter.simulator import Fault, Simulator

TOKEN = "bench-token"  # the simulator's made-up token
PIPELINES_PER_PROJECT = 5
ACTIONS_PER_PIPELINE = 10


def projects_for(actions: int, per_pipeline: int = ACTIONS_PER_PIPELINE) -> int:
    return max(1, actions // (PIPELINES_PER_PROJECT * per_pipeline))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim")
    parser.add_argument("--actions", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to each request")
    parser.add_argument("--list-actions", choices=["summary", "full"], default="full")
    parser.add_argument("--per-pipeline", type=int, default=ACTIONS_PER_PIPELINE)
    args = parser.parse_args(argv)
    sim = Simulator(token=TOKEN, list_actions=args.list_actions, rate_limit=10**9)
    sim.seed_generated(
        "acme",
        projects_for(args.actions, args.per_pipeline),
        PIPELINES_PER_PROJECT,
        args.per_pipeline,
    )
    if args.delay:
        sim.add_fault(Fault(delay=args.delay, passthrough=True))
    # The request log would grow by one entry per request for the whole run.
    sim.requests = _Discard()
    with sim:
        print(sim.url, flush=True)
        sys.stdin.read()  # serve until the parent closes our stdin (or goes away)
    return 0


class _Discard(list):  # type: ignore[type-arg]
    def append(self, _: object) -> None:
        return None


@contextlib.contextmanager
def simulator_process(
    actions: int,
    delay: float = 0.0,
    list_actions: str = "full",
    per_pipeline: int = ACTIONS_PER_PIPELINE,
) -> Iterator[str]:
    """Start the simulator in a child process; yields its base URL.

    The tree is projects x 5 pipelines x ``per_pipeline`` actions.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.sim", "--actions", str(actions), "--delay", str(delay),
         "--list-actions", list_actions, "--per-pipeline", str(per_pipeline)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url:
            raise RuntimeError("the simulator process did not start")
        yield url
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
