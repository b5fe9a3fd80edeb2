"""The fast encoders write exactly what prometheus_client's ``generate_latest`` writes.

Checked over every family the exporter yields (whatever families the collector
grows later) and over hand-made families with every metric type and the awkward
cases: escaping, special floats, counters, timestamps, exemplars, empty families.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterator

import pytest
from conftest import TOKEN
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Exemplar, Timestamp
from pydantic import SecretStr

from exporter.client import BuddyClient
from exporter.config import FetchMode, StatusSeries, Target
from exporter.exposition import Encoder, stock_openmetrics, stock_text
from exporter.poller import Poller
from exporter.render import RenderOptions, families_of
from exporter.simulator import Simulator
from exporter.snapshot import Snapshot

ODD_TEXTS = [
    'say "hi"',
    "back\\slash",
    "two\nlines",
    "trailing\\",
    '\\"\n',
    "ünïcödé ✓ 日本",
    "",
    "100% {braces} 'single' {t} {v0}",
    "tab\tand\rreturn",
]
ODD_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    math.nan,
    math.inf,
    -math.inf,
    1e300,
    -1e300,
    5e-324,
    1e-7,
    123456789.0,
    1.7e9 + 0.123,
    -1.5e10,
    0.1 + 0.2,
    2**53 + 1,
    7,
    True,
]


def assert_equal_encodings(families: list[Metric]) -> None:
    encoder = Encoder()
    assert encoder.text(families) == stock_text(families)
    assert encoder.openmetrics(families) == stock_openmetrics(families)
    # One family at a time too, so a failure names the family.
    for family in families:
        assert Encoder().text([family]) == stock_text([family]), family.name
        assert Encoder().openmetrics([family]) == stock_openmetrics([family]), family.name


def snapshot_from_simulator(sim: Simulator, fetch_mode: FetchMode) -> Snapshot:
    """One real poll cycle of the whole simulated workspace."""

    async def cycle() -> Snapshot:
        client = BuddyClient(sim.url, SecretStr(TOKEN), timeout=5)

        async def publish(_: Snapshot) -> None:
            return None

        try:
            poller = Poller(
                [Target(workspace="acme")],
                {"acme": client},
                publish,
                interval_seconds=60,
                stale_after_seconds=600,
                fetch_mode=fetch_mode,
            )
            return await poller.poll_once()
        finally:
            await client.aclose()

    return asyncio.run(cycle())


@pytest.fixture
def odd_company() -> Iterator[Simulator]:
    """Names that need escaping, values that need care, and an unknown status."""
    sim = Simulator(token=TOKEN)
    sim.seed_generated("acme", projects=2, pipelines=2, actions=3)
    for i, name in enumerate(ODD_TEXTS):
        sim.add_action(
            "acme", "odd", 900, 9000 + i, name, "BUILD", pipeline_name=f"pipe {name}",
            last_execution_status=["weird status!", "SUCCESSFUL", "brand_new"][i % 3],
            timeout=[1e300, 5e-324, -0.0][i % 3], retry_count=i, retry_interval=-1.5e10,
        )  # fmt: skip
    with sim:
        yield sim


@pytest.mark.parametrize("status_series", list(StatusSeries))
@pytest.mark.parametrize("fetch_mode", [FetchMode.GET, FetchMode.LIST])
def test_every_family_the_exporter_yields_encodes_like_prometheus_client(
    odd_company: Simulator, status_series: StatusSeries, fetch_mode: FetchMode
) -> None:
    snapshot = snapshot_from_simulator(odd_company, fetch_mode)
    families = families_of(snapshot, RenderOptions(60, status_series))
    assert any(f.name.startswith("process_") for f in families)
    assert any(f.type == "counter" for f in families)
    assert sum(len(f.samples) for f in families) > 100
    assert_equal_encodings(families)


def test_label_values_and_help_that_need_escaping() -> None:
    gauge = GaugeMetricFamily("odd_labels", 'help "quoted" \\ back\nslash ✓', labels=["a", "b"])
    for i, text in enumerate(ODD_TEXTS):
        gauge.add_metric([text, f"plain{i}"], i)
        gauge.add_metric([f"plain{i}", text], -i)
    single = GaugeMetricFamily("odd_single_label", "", labels=["only"])
    for text in ODD_TEXTS:
        single.add_metric([text], 1)
    assert_equal_encodings([gauge, single])


def test_special_floats() -> None:
    gauge = GaugeMetricFamily("odd_values", "values", labels=["i"])
    bare = []
    for i, number in enumerate(ODD_FLOATS):
        gauge.add_metric([str(i)], number)
        family = GaugeMetricFamily(f"odd_value_{i}", "one value", value=number)
        bare.append(family)
    zeros = GaugeMetricFamily("odd_zeros", "signed zeros", labels=["i"])
    for i in range(50):
        zeros.add_metric([str(i)], -0.0 if i % 7 == 3 else 0.0)
    only_negative = GaugeMetricFamily("odd_negative_zero", "", value=-0.0)
    assert_equal_encodings([gauge, zeros, only_negative, *bare])
    # Memos must not leak one sign or NaN into the next family.
    assert_equal_encodings([zeros, only_negative, gauge, zeros])


def test_every_metric_type_and_empty_families() -> None:
    counter = CounterMetricFamily("odd_events", "Events.", labels=["kind"])
    counter.add_metric(["a"], 3)
    counter.add_metric(["b"], 4.5)
    created = CounterMetricFamily("odd_created", "With created.", labels=["k"])
    created.add_metric(["a"], 1, created=1_700_000_000.5)
    histogram = HistogramMetricFamily("odd_latency_seconds", "H.", labels=["path"])
    histogram.add_metric(["/"], buckets=[("0.1", 1), ("1.0", 3), ("+Inf", 4)], sum_value=2.5)
    gauge_histogram = GaugeHistogramMetricFamily("odd_queue", "GH.")
    gauge_histogram.add_metric([], buckets=[("1.0", 2), ("+Inf", 3)], gsum_value=4.0)
    summary = SummaryMetricFamily("odd_size_bytes", "S.", count_value=3, sum_value=30)
    info = InfoMetricFamily("odd_build", "I.", value={"version": "1.2", "commit": 'ab"c'})
    stateset = StateSetMetricFamily("odd_state", "SS.", value={"up": True, "down": False})
    unknown = UnknownMetricFamily("odd_unknown", "U.", value=2)
    with_unit = GaugeMetricFamily("odd_temperature_celsius", "Unit.", value=20, unit="celsius")
    empty_gauge = GaugeMetricFamily("odd_empty", "No samples.", labels=["x"])
    empty_counter = CounterMetricFamily("odd_empty_events", "No samples.", labels=["x"])
    families: list[Metric] = [
        counter, created, histogram, gauge_histogram, summary, info, stateset, unknown,
        with_unit, empty_gauge, empty_counter,
    ]  # fmt: skip
    assert_equal_encodings(families)


def test_timestamps_exemplars_and_mixed_label_sets_fall_back_to_the_stock_encoder() -> None:
    stamped = GaugeMetricFamily("odd_stamped", "T.", labels=["k"])
    stamped.add_metric(["a"], 1, timestamp=1_700_000_000.25)
    stamped.add_metric(["b"], 2, timestamp=Timestamp(1_700_000_000, 5))
    with_exemplar = Metric("odd_requests", "E.", "counter")
    with_exemplar.add_sample(
        "odd_requests_total", {"k": "a"}, 5, exemplar=Exemplar({"trace_id": "x"}, 1.0, 12.0)
    )
    mixed = Metric("odd_mixed", "M.", "gauge")
    mixed.add_sample("odd_mixed", {"a": "1"}, 1)
    mixed.add_sample("odd_mixed", {"b": "1"}, 2)
    mixed.add_sample("odd_mixed", {}, 3)
    mixed.add_sample("odd_mixed", {"a": "1", "b": "2"}, 4)
    assert_equal_encodings([stamped, with_exemplar, mixed])


def test_random_families_encode_like_prometheus_client() -> None:
    rng = random.Random(5)
    alphabet = ['"', "\\", "\n", "a", "b", "é", "%", "{", "}", " ", "0"]
    families: list[Metric] = []
    for f in range(30):
        width = rng.randrange(0, 5)
        labels = [f"l{i}" for i in range(width)]
        kind = CounterMetricFamily if f % 3 == 0 else GaugeMetricFamily
        help_text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        family = kind(f"rand_{f}", help_text, labels=labels)
        for _ in range(rng.randrange(0, 40) if width else 1):
            values = [
                "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6))) for _ in labels
            ]
            family.add_metric(values, rng.choice([*ODD_FLOATS, rng.uniform(-1e6, 1e6)]))
        families.append(family)
    assert_equal_encodings(families)


def test_the_exporters_families_take_the_fast_path(
    odd_company: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import exporter.exposition as exposition

    sent_to_stock: list[str] = []
    real = exposition._Format.stock

    def spy(self: exposition._Format, family: Metric) -> str:
        if family.samples and not family.name.endswith("_probe"):
            sent_to_stock.append(family.name)
        return real(self, family)

    monkeypatch.setattr(exposition._Format, "stock", spy)
    snapshot = snapshot_from_simulator(odd_company, FetchMode.GET)
    families = families_of(snapshot, RenderOptions(60))
    Encoder().text(families)
    Encoder().openmetrics(families)
    assert sent_to_stock == []
