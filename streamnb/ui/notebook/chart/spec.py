"""The chart's Vega-Lite spec: the user's chart rewritten to draw a named, live dataset.

This module owns :func:`chart_spec` (an Altair chart or a Vega-Lite dict, its inline data
replaced by ``{"name": dataset}``, autosized again as the data grows), the static renderings
for readers without the widget (:func:`static_spec`, :func:`static_mimebundle`: the spec with
the rows inlined, and a PNG by vl-convert), and the Vega-Lite version in vl-convert's spelling
that both these and the bundle builder pass on (``_vl_version``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import polars as pl

from streamnb.exceptions import ConfigError

__all__ = ["chart_spec", "static_mimebundle", "static_spec"]

_SCHEMA_RE = re.compile(r"/v(\d+)\.(\d+)")


def _vl_version(spec_or_schema: Mapping[str, Any] | str | None = None) -> str | None:
    """``"6.4"`` from a ``$schema`` URL (default: Altair's), in vl-convert's spelling."""
    if isinstance(spec_or_schema, Mapping):
        url = spec_or_schema.get("$schema")
    elif isinstance(spec_or_schema, str):
        url = spec_or_schema
    else:
        try:
            import altair as alt

            url = f"/{alt.SCHEMA_VERSION}."
        except ImportError:  # pragma: no cover - altair is a dependency
            return None
    match = _SCHEMA_RE.search(url) if isinstance(url, str) else None
    return f"{match.group(1)}.{match.group(2)}" if match else None


def chart_spec(
    chart: Any, schema: pl.Schema | None = None, dataset: str = "data"
) -> dict[str, Any]:
    """The Vega-Lite spec of ``chart`` with its data replaced by the named dataset ``dataset``.

    ``chart`` is an Altair chart (any top-level kind) or a Vega-Lite dict. With a ``schema``,
    Altair infers the encoding types that the chart leaves out (``x="dateTime"`` becomes
    temporal) from the columns' dtypes. No data is inlined.
    """
    if isinstance(chart, Mapping):
        spec: dict[str, Any] = json.loads(json.dumps(chart))
    elif callable(getattr(chart, "to_dict", None)) and callable(getattr(chart, "copy", None)):
        template = chart.copy(deep=True)
        if schema is not None:
            template.data = pl.DataFrame(schema=schema)
        spec = template.to_dict()
    else:
        raise ConfigError(
            f"chart(chart=...) must be an Altair chart or a Vega-Lite dict, not "
            f"{type(chart).__name__}"
        )
    datasets = spec.get("datasets")
    old = spec.get("data")
    if isinstance(datasets, dict) and isinstance(old, dict) and old.get("name") in datasets:
        del datasets[old["name"]]  # the (empty) inline copy of the template's data
    if isinstance(datasets, dict) and dataset in datasets:
        raise ConfigError(f"dataset={dataset!r} is already a dataset of the chart")
    if isinstance(datasets, dict) and not datasets:
        del spec["datasets"]
    spec["data"] = {"name": dataset}
    # lay the chart out again as its data changes (axis labels grow): Vega only sizes a view
    # once, on its first (empty) run, unless autosize asks for resize
    autosize = spec.get("autosize", "pad")
    if isinstance(autosize, str):
        spec["autosize"] = {"type": autosize, "resize": True}
    elif isinstance(autosize, dict):
        spec["autosize"] = {**autosize, "resize": autosize.get("resize", True)}
    return spec


def static_spec(
    spec: Mapping[str, Any], rows: list[dict[str, Any]], dataset: str
) -> dict[str, Any]:
    """``spec`` with ``rows`` inlined as its named dataset (for a static rendering)."""
    out = dict(spec)
    out["datasets"] = {**dict(spec.get("datasets") or {}), dataset: rows}
    return out


def static_mimebundle(
    spec: Mapping[str, Any], rows: list[dict[str, Any]], dataset: str, *, png: bool
) -> dict[str, Any]:
    """A static rendering: the Vega-Lite spec with the data, and a PNG (vl-convert) if asked.

    Never raises: whatever cannot be rendered is left out.
    """
    full = static_spec(spec, rows, dataset)
    major = (_vl_version(full) or "6.").split(".")[0]
    bundle: dict[str, Any] = {f"application/vnd.vegalite.v{major}+json": full}
    if png:
        try:
            import base64

            import vl_convert as vlc

            try:
                image = vlc.vegalite_to_png(full, vl_version=_vl_version(full))
            except ValueError:
                image = vlc.vegalite_to_png(full)
            bundle["image/png"] = base64.b64encode(image).decode("ascii")
        except Exception as exc:  # a static picture is a courtesy: never fail the query
            bundle["text/plain"] = f"(streamnb chart: no static rendering: {exc})"
    return bundle
