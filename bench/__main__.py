"""``python -m bench [--quick] [--output PATH]``: measure, print the table, write Markdown."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench import phases
from bench.phases import FULL, LATENCY, QUICK, Budget
from bench.report import Table, fmt_number, machine, ms, ratio
from bench.sim import simulator_process
from exporter.config import FetchMode, StatusSeries
from exporter.render import RenderOptions

DEFAULT_OUTPUT = Path("BENCHMARKS.md")
CELLS = [(1, False), (1, True), (8, False), (8, True)]


def _size(n: int) -> str:
    return f"{n:,}"


def run(budget: Budget, quick: bool) -> tuple[list[Table], list[str]]:
    tables: list[Table] = []
    targets: list[str] = []
    focus = 10_000 if 10_000 in budget.sizes else budget.sizes[-1]

    step = time.monotonic()
    snaps = phases.snapshots(budget.sizes)
    print(f"[bench] snapshots built in {time.monotonic() - step:.1f}s", file=sys.stderr)

    # -- render --------------------------------------------------------------------------
    step = time.monotonic()
    render = Table(
        "Render: text exposition of one snapshot (best of runs)",
        ["actions", "status_series", "series", "MiB", "ours ms", "generate_latest ms",
         "ours/stock", "encode only: ours ms", "stock ms", "ours/stock", "collect ms",
         "gzip ms"],
    )  # fmt: skip
    render_focus = None
    for size in budget.sizes:
        for mode in StatusSeries:
            f = phases.render_figures(snaps[size], mode, stock_runs=1 if size >= 10_000 else 3)
            if size == focus and mode is StatusSeries.ALL:
                render_focus = f
            render.add(
                _size(size), mode.value, _size(f.series), f.text_bytes / 2**20, ms(f.ours),
                ms(f.stock), ratio(f.ours / f.stock), ms(f.ours_encode), ms(f.stock_encode),
                ratio(f.ours_encode / f.stock_encode), ms(f.collect), ms(f.gzip),
            )  # fmt: skip
    render.notes = [
        "ours = collect the families + our encoder; generate_latest = the same collect + "
        "prometheus_client's encoder; both outputs are byte-identical (tests/test_exposition.py)",
        "encode only = the same already-collected families through each encoder",
        "gzip = level 6 of the plain bytes, done once per snapshot for each gzip form asked for",
    ]
    tables.append(render)
    print(f"[bench] render done in {time.monotonic() - step:.1f}s", file=sys.stderr)

    # -- scrape --------------------------------------------------------------------------
    step = time.monotonic()
    scrape = Table(
        "Scrape: GET /metrics (text), load generator in its own process, keep-alive",
        ["actions", "status_series", "clients", "gzip", "MiB", "ours p50 ms", "ours p99 ms",
         "ours /s", "stock p50 ms", "stock p99 ms", "stock /s", "floor p50 ms",
         "floor p99 ms", "floor /s", "ours/stock", "ours/floor"],
    )  # fmt: skip
    scrape_focus = None
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        for size in budget.sizes:
            scale = max(1, size // 1000)
            cap = max(8, budget.max_requests // scale)
            for mode in StatusSeries:
                options = RenderOptions(60, mode)
                ours = phases.scrape_figures(pool, "ours", snaps[size], options, CELLS, budget, cap)
                floor = phases.scrape_figures(
                    pool, "floor", snaps[size], options, CELLS, budget, cap
                )
                stock = (
                    phases.scrape_figures(pool, "stock", snaps[size], options, CELLS, budget,
                                          1 if size >= 10_000 else 5)
                    if size in budget.stock_scrape_sizes
                    else {}
                )  # fmt: skip
                for cell in CELLS:
                    o, fl, st = ours[cell], floor[cell], stock.get(cell)
                    if size == focus and mode is StatusSeries.ALL and cell == (1, False):
                        scrape_focus = (o, st, fl)
                    scrape.add(
                        _size(size), mode.value, cell[0], "yes" if cell[1] else "no",
                        o.mean_bytes / 2**20, ms(o.median), ms(o.p99), o.rate,
                        ms(st.median) if st else None, ms(st.p99) if st else None,
                        st.rate if st else None, ms(fl.median), ms(fl.p99), fl.rate,
                        ratio(st.median / o.median) + " faster" if st else None,
                        ratio(o.median / fl.median),
                    )  # fmt: skip
    skipped = [s for s in budget.sizes if s not in budget.stock_scrape_sizes]
    scrape.notes = [
        "ours = this exporter's server over pre-rendered bytes; stock = prometheus_client's "
        "start_http_server with a registry holding our collector over the same snapshot "
        "(renders every scrape, HTTP/1.0, gzip level 9); floor = a minimal "
        "ThreadingHTTPServer handler writing the same bytes from memory",
        "ours/stock = stock median / ours median; ours/floor = ours median / floor median",
        "stock at 10,000+ actions: one scrape per client (each costs seconds of CPU), so "
        "p99 is the slowest of 1 or 8",
    ]
    if skipped:
        scrape.notes.append(
            "stock not scraped at " + ", ".join(_size(s) for s in skipped) + " actions: one "
            "scrape costs at least the generate_latest time in the render table, 8 clients "
            "would take minutes; the render table is its lower bound"
        )
    tables.append(scrape)
    print(f"[bench] scrape done in {time.monotonic() - step:.1f}s", file=sys.stderr)

    # -- poll ----------------------------------------------------------------------------
    step = time.monotonic()
    conc = budget.poll_concurrency
    poll = Table(
        f"Poll: one cycle against the simulator, {LATENCY * 1000:.0f} ms per request, "
        f"max_concurrency {conc}",
        ["actions", "fetch_mode", "cycle", "requests", "wall s", "ideal s", "wall/ideal",
         "CPU s", "CPU s per 1,000 actions"],
    )  # fmt: skip
    poll_focus = None
    for size in budget.sizes:
        with simulator_process(size, delay=LATENCY) as url:
            for fetch in (FetchMode.GET, FetchMode.LIST):
                if fetch is FetchMode.GET and size not in budget.poll_get_sizes:
                    continue
                cycles = phases.poll_cycles(url, fetch, conc, count=2)
                for i, c in enumerate(cycles):
                    ideal = c.requests * LATENCY / conc
                    if size == focus and fetch is FetchMode.GET and i == 1:
                        poll_focus = (c.wall, ideal)
                    poll.add(
                        _size(size), fetch.value, "first (discovery)" if i == 0 else "next",
                        _size(c.requests), c.wall, ideal, ratio(c.wall / ideal), c.cpu,
                        c.cpu / size * 1000,
                    )  # fmt: skip
    poll.notes = [
        "ideal = requests × latency / max_concurrency; the first cycle also discovers "
        "(projects, pipelines and action lists), later ones reuse what it found",
        "get: one GET per action after the lists; list: the pipelines' action lists carry "
        "every field (simulator with full lists), so no per-action GET",
        "CPU = the poller's process CPU for the cycle (parsing, HTTP client, snapshot), "
        "the simulator runs in another process; rendering is measured above",
    ]
    get_skipped = [s for s in budget.sizes if s not in budget.poll_get_sizes]
    if get_skipped:
        poll.notes.append(
            "get mode not run at " + ", ".join(_size(s) for s in get_skipped) + " actions: "
            f"its ideal alone is ~{get_skipped[-1] * LATENCY / conc:.0f} s per cycle at this "
            "concurrency, over this benchmark's time budget; CPU per 1,000 actions is flat "
            "from 1,000 to 10,000"
        )
    tables.append(poll)
    print(f"[bench] poll done in {time.monotonic() - step:.1f}s", file=sys.stderr)

    # -- memory and start-up -------------------------------------------------------------
    step = time.monotonic()
    memory = Table(
        "Memory: RSS of `python -m exporter` (status_series all, list mode)",
        ["actions", "after", "RSS MiB", "text exposition MiB"],
    )
    rss_focus = None
    for size in budget.sizes:
        rss, body = phases.first_cycle_rss(size)
        if size == focus:
            rss_focus = rss
        memory.add(_size(size), "first cycle and one scrape", rss, body)
    soak = phases.soak_rss(budget.soak_actions, budget.soak_cycles)
    for cycle, rss in soak:
        memory.add(_size(budget.soak_actions), f"cycle {cycle} (back to back)", rss, None)
    base = soak[1] if len(soak) > 2 else soak[0]
    growth = soak[-1][1] - base[1]
    memory.notes = [f"growth from cycle {base[0]} to {soak[-1][0]}: {growth:+.1f} MiB"]
    tables.append(memory)
    startup = phases.startup_seconds(budget.startup_actions)
    start = Table("Start-up", ["actions", "launch to /readyz 200 s"])
    start.add(_size(budget.startup_actions), startup)
    tables.append(start)
    print(f"[bench] memory and start-up done in {time.monotonic() - step:.1f}s", file=sys.stderr)

    # -- targets -------------------------------------------------------------------------
    if render_focus and scrape_focus and poll_focus and rss_focus is not None:
        o, st, fl = scrape_focus
        speedup = st.median / o.median if st else float("nan")
        wall, ideal = poll_focus
        r = render_focus.ours / render_focus.stock
        targets = [
            f"| median scrape vs stock | ≥ 20× faster | {ratio(speedup)} faster | "
            f"{'met' if speedup >= 20 else 'missed'} |",
            f"| median scrape vs floor | ≤ 2× | {ratio(o.median / fl.median)} | "
            f"{'met' if o.median <= 2 * fl.median else 'missed'} |",
            f"| render vs generate_latest | ≤ 0.25× | {r:.2f}× (encode only "
            f"{render_focus.ours_encode / render_focus.stock_encode:.2f}×) | "
            f"{'met' if r <= 0.25 else 'missed'} |",
            f"| poll cycle (get, next) vs ideal | ≤ 1.3× | {wall / ideal:.2f}× | "
            f"{'met' if wall <= 1.3 * ideal else 'missed'} |",
            f"| RSS after first cycle | < 150 MB | {rss_focus * 1.048576:.0f} MB | "
            f"{'met' if rss_focus * 1.048576 < 150 else 'missed'} |",
            f"| RSS growth over {budget.soak_cycles} cycles | flat | {growth:+.1f} MiB | "
            f"{'met' if abs(growth) < 10 else 'check'} |",
        ]
    return tables, [f"focus size: {fmt_number(focus)} actions, status_series all", *targets]


def markdown(tables: list[Table], targets: list[str], seconds: float, quick: bool) -> str:
    out = ["# Benchmarks", ""]
    out.append(
        "Produced by `python -m bench`"
        + (" --quick (tiny sizes, not meaningful)" if quick else "")
        + f" in {seconds:.0f} s. Every figure of a table was measured in the same run, side by "
        "side with its baseline."
    )
    out += ["", "## Machine", ""] + [f"- {line}" for line in machine()]
    if len(targets) > 1:
        out += ["", "## Targets", "", f"At {targets[0]}.", ""]
        out += ["| target | goal | measured | |", "|---|---|---|---|", *targets[1:]]
    out += ["", "## Figures", ""]
    for table in tables:
        out += [table.markdown()]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds; for CI")
    parser.add_argument(
        "--output", type=Path, default=None,
        help=f"where to write the Markdown (default {DEFAULT_OUTPUT}; --quick writes none "
        "unless given)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    started = time.monotonic()
    tables, targets = run(QUICK if args.quick else FULL, args.quick)
    seconds = time.monotonic() - started
    for table in tables:
        print(table.text())
    for line in targets:
        print(line)
    output = args.output if args.output or args.quick else DEFAULT_OUTPUT
    if output is not None:
        output.write_text(markdown(tables, targets, seconds, args.quick), encoding="utf-8")
        print(f"written to {output}")
    print(f"total {seconds:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
