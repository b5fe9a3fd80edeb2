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
from bench.report import Table, machine, ms, ratio
from bench.sim import simulator_process
from exporter.config import FetchMode, StatusSeries
from exporter.render import RenderOptions

DEFAULT_OUTPUT = Path("BENCHMARKS.md")
CELLS = [(1, False), (1, True), (8, False), (8, True)]


def _size(n: int) -> str:
    return f"{n:,}"


def _progress(message: str, since: float) -> None:
    print(f"[bench] {message} ({time.monotonic() - since:.0f}s)", file=sys.stderr, flush=True)


def run(budget: Budget) -> tuple[list[Table], list[str]]:
    tables: list[Table] = []
    focus = 10_000 if 10_000 in budget.sizes else budget.sizes[-1]
    conc = budget.poll_concurrency

    # -- poll (its list-mode cycles give the snapshots the later phases use) ---------------
    step = time.monotonic()
    poll = Table(
        f"Poll: one cycle against the simulator, {LATENCY * 1000:.0f} ms per request, "
        f"max_concurrency {conc}",
        ["actions", "fetch_mode", "cycle", "requests", "wall s", "ideal s", "wall/ideal",
         "CPU s", "CPU s per 1,000 actions"],
    )  # fmt: skip
    poll_focus = None
    snaps = {}
    for size in budget.sizes:
        with simulator_process(size, delay=LATENCY) as url:
            for fetch in (FetchMode.GET, FetchMode.LIST):
                if fetch is FetchMode.GET and size not in budget.poll_get_sizes:
                    continue
                # A next cycle only where it fits the budget.
                count = 2 if size <= 1_000 else 1
                cycles = phases.poll_cycles(url, fetch, conc, count=count)
                if fetch is FetchMode.LIST:
                    snaps[size] = cycles[0].snapshot
                for i, c in enumerate(cycles):
                    ideal = c.requests * LATENCY / conc
                    if size == focus and fetch is FetchMode.GET:
                        poll_focus = (c.wall, ideal)
                    poll.add(
                        _size(size), fetch.value, "first (discovery)" if i == 0 else "next",
                        _size(c.requests), c.wall, ideal, ratio(c.wall / ideal), c.cpu,
                        c.cpu / size * 1000,
                    )  # fmt: skip
                _progress(f"poll {size} {fetch.value}", step)
        assert len(snaps[size].actions) == size, (size, len(snaps[size].actions))
    poll.notes = [
        "ideal = requests × latency / max_concurrency (the configured default, 8); the "
        "first cycle also discovers (projects, pipelines, action lists), a next cycle reuses "
        "what it found",
        "get: one GET per action after the lists; list: the pipelines' action lists carry "
        "every field (simulator with full lists), so no per-action GET",
        "CPU = the poller's process CPU for the cycle (HTTP client, parsing, snapshot), the "
        "simulator runs in another process; rendering is measured below",
        "the client-side rate limit is lifted here; with the default "
        "buddy.max_requests_per_second of 10 a cycle takes at least requests / 10 seconds "
        "(10,000 actions in get mode: ~17 minutes; in list mode: ~2 minutes)",
    ]
    get_skipped = [s for s in budget.sizes if s not in budget.poll_get_sizes]
    if get_skipped:
        poll.notes.append(
            "get mode not run at " + ", ".join(_size(s) for s in get_skipped) + " actions: its "
            f"ideal alone is ~{get_skipped[-1] * 1.1 * LATENCY / conc:.0f} s per cycle at this "
            "concurrency, over this benchmark's time budget"
        )
    tables.append(poll)

    # -- render --------------------------------------------------------------------------
    render = Table(
        "Render: text exposition of one snapshot",
        ["actions", "status_series", "series", "MiB", "ours ms", "generate_latest ms",
         "ours/stock", "encode: ours ms", "encode: stock ms", "encode ours/stock",
         "collect ms", "gzip ms"],
    )  # fmt: skip
    render_focus = None
    for size in budget.sizes:
        for mode in StatusSeries:
            # The encode-only split is shown up to 10,000 actions: at 50,000 it would cost
            # another half-minute of stock encoding for the same ratio.
            f = phases.render_figures(
                snaps[size], mode, runs=1 if size >= 10_000 else 3, encode_only=size <= 10_000
            )
            if size == focus and mode is StatusSeries.ALL:
                render_focus = f
            render.add(
                _size(size), mode.value, _size(f.series), f.text_bytes / 2**20, ms(f.ours),
                ms(f.stock), ratio(f.ours / f.stock), ms(f.ours_encode), ms(f.stock_encode),
                ratio(f.ours_encode / f.stock_encode) if f.ours_encode == f.ours_encode else None,
                ms(f.collect), ms(f.gzip),
            )  # fmt: skip
        _progress(f"render {size}", step)
    render.notes = [
        "collect = the collector's families for the snapshot plus the process metrics "
        "(prometheus_client objects, the same for both); encode = those families to bytes "
        "by our encoder or by prometheus_client's generate_latest, whose outputs are "
        "byte-identical (tests/test_exposition.py); ours = collect + our encode, "
        "generate_latest = collect + its encode",
        "ours also pauses the cyclic GC while it renders (render.py), as the exporter does; "
        "the encode columns run both encoders under the same GC conditions, and are left "
        "out at 50,000 actions to keep the run within its time budget",
        "best of 3 below 10,000 actions, one run above; gzip = level 6 of the plain bytes, "
        "once per snapshot for each gzip form asked for",
    ]
    tables.append(render)

    # -- scrape --------------------------------------------------------------------------
    scrape = Table(
        "Scrape: GET /metrics (text), load generator in its own process, keep-alive",
        ["actions", "status_series", "clients", "gzip", "MiB", "ours p50 ms", "ours p99 ms",
         "ours /s", "stock p50 ms", "stock p99 ms", "stock /s", "floor p50 ms",
         "floor p99 ms", "floor /s", "stock/ours", "ours/floor"],
    )  # fmt: skip
    scrape_focus = None
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        for size in budget.sizes:
            cap = max(8, budget.max_requests * 1000 // max(size, 1000))
            for mode in StatusSeries:
                store = phases.built_store(snaps[size], RenderOptions(60, mode))
                seconds = budget.cell_seconds
                ours = phases.scrape_figures(pool, "ours", store, CELLS, seconds, cap)
                floor = phases.scrape_figures(pool, "floor", store, CELLS, seconds, cap)
                stock: dict[tuple[int, bool], phases.ScrapeFigures] = {}
                if size in budget.stock_scrape_sizes:
                    # Each stock scrape renders: at 10,000 actions one client, one request.
                    big = size >= 10_000
                    stock_cells = [c for c in CELLS if not (big and c[0] == 8)]
                    stock = phases.scrape_figures(
                        pool, "stock", store, stock_cells, 0.0 if big else 1.0, 1 if big else 5
                    )
                del store
                for cell in CELLS:
                    o, fl, st = ours[cell], floor[cell], stock.get(cell)
                    if size == focus and mode is StatusSeries.ALL and cell == (1, False):
                        scrape_focus = (o, st, fl)
                    scrape.add(
                        _size(size), mode.value, cell[0], "yes" if cell[1] else "no",
                        o.mean_bytes / 2**20, ms(o.median), ms(o.p99), o.rate,
                        ms(st.median) if st else None, ms(st.p99) if st else None,
                        st.rate if st else None, ms(fl.median), ms(fl.p99), fl.rate,
                        ratio(st.median / o.median) if st else None,
                        ratio(o.median / fl.median),
                    )  # fmt: skip
                _progress(f"scrape {size} {mode.value}", step)
    skipped = [s for s in budget.sizes if s not in budget.stock_scrape_sizes]
    scrape.notes = [
        "ours = this exporter's server over pre-rendered bytes; stock = prometheus_client's "
        "start_http_server with a registry holding our collector over the same snapshot "
        "(renders on every scrape; HTTP/1.0, so one connection per scrape; gzip level 9); "
        "floor = a minimal ThreadingHTTPServer handler writing the same bytes from memory",
        "stock/ours = how many times faster our median is; ours/floor = our median over the "
        "floor's (1.00× = as fast as serving bytes can be on this stack)",
        "stock at 10,000 actions: one scrape per cell (each costs seconds of CPU), so p50 = "
        "p99; 8 clients not run (8 renders of seconds each share 2 cores: over the budget; "
        "an earlier run measured a 42 s median there)",
    ]
    if skipped:
        scrape.notes.append(
            "stock not scraped at " + ", ".join(_size(s) for s in skipped) + " actions: one "
            "scrape costs at least the generate_latest time in the render table"
        )
    tables.append(scrape)

    # -- memory and start-up -------------------------------------------------------------
    memory = Table(
        "Memory: RSS of `python -m exporter` (status_series all, list mode)",
        ["actions", "after", "RSS MiB", "text exposition MiB"],
    )
    rss_focus = None
    for size in budget.sizes:
        rss, body = phases.first_cycle_rss(size, budget.deep_tree)
        if size == focus:
            rss_focus = rss
        memory.add(_size(size), "first cycle and one scrape", rss, body)
        _progress(f"memory {size}", step)
    soak = phases.soak_rss(
        budget.soak_actions, budget.soak_cycles, budget.deep_tree, budget.soak_series
    )
    for cycle, rss in soak:
        memory.add(
            _size(budget.soak_actions),
            f"cycle {cycle} (back to back, status_series {budget.soak_series})",
            rss,
            None,
        )
    base = soak[1] if len(soak) > 2 else soak[0]
    half = soak[-2] if len(soak) > 2 else soak[0]
    warmup_growth = soak[-1][1] - base[1]
    growth = soak[-1][1] - half[1]
    memory.notes = [
        f"growth from cycle {base[0]} to {soak[-1][0]}: {warmup_growth:+.1f} MiB; from cycle "
        f"{half[0]} to {soak[-1][0]}: {growth:+.1f} MiB (the target's figure: RSS climbs to "
        "the high-water mark of the largest render the allocator has served, then stays)",
        f"the simulated tree here has {budget.deep_tree} actions per pipeline, so a cycle "
        "needs few requests; the soak renders status_series "
        f"{budget.soak_series} so that {budget.soak_cycles} cycles fit the time budget (each "
        "cycle renders and swaps in a whole new exposition either way)",
        "each run first checks that the exporter exports every action",
    ]
    tables.append(memory)
    _progress("soak", step)
    startup = phases.startup_seconds(budget.startup_actions)
    start = Table("Start-up", ["actions", "launch to /readyz 200 s"])
    start.add(_size(budget.startup_actions), startup)
    start.notes = ["`python -m exporter` in a new process, fetch_mode auto, first cycle included"]
    tables.append(start)

    # -- targets -------------------------------------------------------------------------
    targets: list[str] = [f"{_size(focus)} actions, status_series all"]
    if render_focus and scrape_focus and poll_focus and rss_focus is not None:
        o, st, fl = scrape_focus
        speedup = st.median / o.median if st else float("nan")
        wall, ideal = poll_focus
        r = render_focus.ours / render_focus.stock
        e = render_focus.ours_encode / render_focus.stock_encode
        mb = rss_focus * 1.048576
        targets += [
            _target("median scrape vs stock", "≥ 20× faster", f"{ratio(speedup)} faster",
                    speedup >= 20),
            _target("median scrape vs floor", "≤ 2×", ratio(o.median / fl.median),
                    o.median <= 2 * fl.median),
            _target("render vs generate_latest", "≤ 0.25×", f"{r:.2f}× (encode alone {e:.2f}×)",
                    r <= 0.25),
            _target("poll cycle (get) vs ideal", "≤ 1.3×", f"{wall / ideal:.2f}×",
                    wall <= 1.3 * ideal),
            _target("RSS after the first cycle", "< 150 MB", f"{mb:.0f} MB", mb < 150),
            _target(f"RSS growth over {budget.soak_cycles} cycles", "flat",
                    f"{growth:+.1f} MiB over the second half "
                    f"({warmup_growth:+.1f} MiB from cycle {base[0]})", abs(growth) < 2),
        ]  # fmt: skip
    return tables, targets


def _target(name: str, goal: str, measured: str, met: bool) -> str:
    return f"| {name} | {goal} | {measured} | {'met' if met else 'missed'} |"


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
        out += ["", "## Targets", "", f"At {targets[0]}:", ""]
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
    tables, targets = run(QUICK if args.quick else FULL)
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
