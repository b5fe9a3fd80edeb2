"""Fast text and OpenMetrics encoders, byte for byte equal to prometheus_client's own.

prometheus_client's families stay the source of truth: the encoders read the
same ``Metric`` objects that ``generate_latest`` reads, and everything that is
not a plain sample line is produced by prometheus_client itself:

- each family's ``# HELP`` / ``# TYPE`` / ``# UNIT`` lines are the stock encoder's
  output for an empty copy of the family (so name munging and help escaping are
  the library's);
- sample and label names go through the library's escaping functions, once per
  distinct name;
- values go through ``floatToGoString``, once per distinct value;
- a family the fast path does not cover (mixed sample names such as histograms or
  ``_created`` samples, timestamps, exemplars, native histograms, ``None`` values,
  differing label sets) is encoded by the stock encoder on its own.

The fast path is what makes 200,000 series affordable: for a family whose
samples share one name and one label set, the label values are pulled out with
one ``itemgetter`` and formatted into a per-family template by C-level ``map``
calls, with no Python code run per sample. Escaping is checked on the result,
so the rare value that needs it costs a second look, not every value.
"""

from __future__ import annotations

import functools
import math
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any, cast

from prometheus_client.exposition import generate_latest as _stock_text
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import escape_label_name
from prometheus_client.openmetrics.exposition import generate_latest as _stock_openmetrics
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["Encoder", "stock_openmetrics", "stock_text"]

_OM_EOF = "# EOF\n"
# Samples the text encoder moves out of their family into a separate gauge family.
_TEXT_MOVED_SUFFIXES = ("_created", "_gsum", "_gcount")


class _Families:
    """A collector over a fixed list of families, the shape the stock encoders want."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def stock_text(families: Iterable[Metric]) -> bytes:
    """prometheus_client's text format 0.0.4 of ``families`` (the reference)."""
    return _stock_text(_Families(families))


def stock_openmetrics(families: Iterable[Metric]) -> bytes:
    """prometheus_client's OpenMetrics 1.0 of ``families`` (the reference)."""
    return bytes(_stock_openmetrics(_Families(families)))  # type: ignore[no-untyped-call]


def _empty_copy(family: Metric) -> Metric:
    copy = Metric.__new__(Metric)
    copy.__dict__.update(family.__dict__)
    copy.samples = []
    return copy


class _Format:
    """What differs between the two formats: headers, sample names, the trailer."""

    def __init__(self, stock: Callable[[Iterable[Metric]], bytes], trailer: str) -> None:
        self._stock = stock
        self.trailer = trailer
        self._names: dict[str, str] = {}

    def stock(self, family: Metric) -> str:
        """The stock encoding of one family alone, without the trailer."""
        text = self._stock([family]).decode("utf-8")
        return text[: len(text) - len(self.trailer)] if self.trailer else text

    def header(self, family: Metric) -> str:
        return self.stock(_empty_copy(family))

    def sample_name(self, name: str) -> str:
        """``name`` as the stock encoder writes it in a sample line (asked of it once)."""
        escaped = self._names.get(name)
        if escaped is None:
            probe = Metric(name + "_probe", "", "unknown")
            probe.add_sample(name, {}, 0.0)
            line = self.stock(probe).splitlines()[-1]
            escaped = self._names[name] = line.rsplit(" ", 1)[0]
        return escaped


class Encoder:
    """Encodes families in either format; value and name memos live as long as it does.

    One encoder per snapshot is the intended use: the memo of formatted values
    then holds the few distinct values of one snapshot and is dropped with it.
    """

    def __init__(self) -> None:
        self._text = _Format(stock_text, "")
        self._openmetrics = _Format(stock_openmetrics, _OM_EOF)
        self._values: dict[Any, str] = {}
        self._label_names: dict[str, str] = {}
        self._label_values: dict[str, str] = {}

    def text(self, families: Iterable[Metric]) -> bytes:
        """Text format 0.0.4, equal to ``prometheus_client.exposition.generate_latest``."""
        return self._encode(families, self._text)

    def openmetrics(self, families: Iterable[Metric]) -> bytes:
        """OpenMetrics 1.0, equal to ``prometheus_client.openmetrics...generate_latest``."""
        return self._encode(families, self._openmetrics)

    def _encode(self, families: Iterable[Metric], fmt: _Format) -> bytes:
        # Each family's text becomes bytes at once, so the whole exposition is never
        # held as text and bytes at the same time.
        parts: list[bytes] = []
        for family in families:
            lines = self._fast_samples(family, fmt)
            if lines is None:
                parts.append(fmt.stock(family).encode("utf-8"))
            else:
                parts.append((fmt.header(family) + lines).encode("utf-8"))
        parts.append(fmt.trailer.encode("utf-8"))
        return b"".join(parts)

    def _fast_samples(self, family: Metric, fmt: _Format) -> str | None:
        """The sample lines of ``family``, or ``None`` if it needs the stock encoder."""
        samples: Sequence[Sample] = family.samples
        n = len(samples)
        if n == 0:
            return ""
        name = samples[0].name
        if fmt is self._text and any(name == family.name + s for s in _TEXT_MOVED_SUFFIXES):
            return None
        columns = list(zip(*samples, strict=True))
        names, labels, values = columns[0], columns[1], columns[2]
        # Timestamps, exemplars, native histograms (and any later field) must be unset.
        if names.count(name) != n or any(c.count(None) != n for c in columns[3:]):
            return None
        if None in values:
            return None
        keys = tuple(sorted(samples[0].labels))
        width = len(keys)
        if set(map(len, labels)) != {width}:
            return None
        prefix = fmt.sample_name(name)
        label_names = tuple(self._label_name(k) for k in keys)
        lines = _line_writer(prefix, label_names)
        if lines is None:
            return None
        texts = self._value_texts(list(values))
        if width == 0:
            return lines((), texts)
        getter = itemgetter(*keys)
        try:
            label_values = list(map(getter, labels))
        except KeyError:  # same size, other names
            return None
        out = lines(label_values, texts)
        # Values never hold quotes, backslashes or newlines; label values rarely do.
        if out.count('"') != 2 * width * n or "\\" in out or out.count("\n") != n:
            escape = self._escape_label_value
            if width == 1:
                label_values = list(map(escape, label_values))
            else:
                label_values = [tuple(map(escape, v)) for v in label_values]
            out = lines(label_values, texts)
        return out

    def _label_name(self, name: str) -> str:
        escaped = self._label_names.get(name)
        if escaped is None:
            escaped = self._label_names[name] = escape_label_name(name)
        return escaped

    def _escape_label_value(self, value: str) -> str:
        escaped = self._label_values.get(value)
        if escaped is None:
            escaped = self._label_values[value] = (
                value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
            )
        return escaped

    def _value_texts(self, values: Sequence[Any]) -> list[str]:
        """`` <value>\\n`` for each value, formatted by ``floatToGoString`` once per value."""
        memo = self._values
        texts: list[Any] = list(map(memo.get, values))
        if None in texts:
            for i, text in enumerate(texts):
                if text is None:
                    value = values[i]
                    text = memo.get(value)
                    if text is None:
                        text = " " + _go_float(value) + "\n"
                        # NaN never equals itself, so it is never served from the memo;
                        # -0.0 equals 0.0, so zeros are memoised as 0.0 and fixed below.
                        if value == value:
                            memo[value] = _POSITIVE_ZERO if value == 0 else text
                    texts[i] = text
        if _POSITIVE_ZERO in texts and _has_negative_zero(values):
            for i, value in enumerate(values):
                if value == 0 and math.copysign(1.0, value) < 0:
                    texts[i] = " " + _go_float(value) + "\n"
        return texts


_POSITIVE_ZERO = " 0.0\n"
_NEGATIVE_ZERO_BYTES = array("d", [-0.0]).tobytes()
_go_float = cast(Callable[[Any], str], floatToGoString)


def _has_negative_zero(values: Sequence[Any]) -> bool:
    """Whether any value is -0.0, found by the bytes of the doubles rather than a loop."""
    try:
        raw = array("d", values).tobytes()
    except (TypeError, OverflowError):
        return True  # odd value types: let the caller check one by one
    size = len(_NEGATIVE_ZERO_BYTES)
    at = raw.find(_NEGATIVE_ZERO_BYTES)
    while at != -1:
        if at % size == 0:
            return True
        at = raw.find(_NEGATIVE_ZERO_BYTES, at + 1)
    return False


_SAFE_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LineWriter = Callable[[Iterable[Any], Sequence[str]], str]


@functools.lru_cache(maxsize=1024)
def _line_writer(prefix: str, label_names: tuple[str, ...]) -> _LineWriter | None:
    """A function writing ``prefix{name="value",...}<value text>`` lines for one label set.

    It is generated as one f-string list comprehension, which formats a line
    about four times faster than ``%`` or ``str.format``; its source holds only
    names the stock escaping has reduced to ``[A-Za-z0-9_:]``, so nothing in it
    comes from label values.
    """
    if not _SAFE_NAME.fullmatch(prefix) or not all(map(_SAFE_NAME.fullmatch, label_names)):
        return None
    width = len(label_names)
    variables = [f"v{i}" for i in range(width)]
    if width:
        labels = ",".join(f'{k}="{{{v}}}"' for k, v in zip(label_names, variables, strict=True))
        line = f"{prefix}{{{{{labels}}}}}{{t}}"
        target = variables[0] if width == 1 else "(" + ", ".join(variables) + ",)"
        source = (
            "def lines(label_values, texts):\n"
            f"    return ''.join([f'{line}' for {target}, t in zip(label_values, texts)])\n"
        )
    else:
        source = (
            "def lines(label_values, texts):\n"
            f"    return ''.join(['{prefix}' + t for t in texts])\n"
        )
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # noqa: S102 -- the source is built from checked names only
    writer: _LineWriter = namespace["lines"]
    return writer
