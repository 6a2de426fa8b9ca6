"""The gauge of EnvoyFilter patches left out, beside the `envoyfilter patch left out` event
and `/debug/configz` `envoyFilterProblems` (stage.py):

    meshd_envoy_filter_patches_left_out{namespace, name, reason}

the number of an EnvoyFilter's configPatches left out of output meshd still serves, by
`reason` (apply.CODES: a closed set; the full text is in the event and configz). Computed
when scraped from the Generator's rows: an EnvoyFilter fixed or deleted drops out once the
output that left its patch out ages out of the cache, as in configz.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily

METRIC = "meshd_envoy_filter_patches_left_out"


class LeftOutPatches:
    """A prometheus_client collector over `rows()` (Generator.envoy_filter_problems)."""

    def __init__(self, rows: Callable[[], Sequence[Mapping[str, Any]]]):
        self._rows = rows

    def describe(self) -> list[Any]:
        return []  # collected on scrape only

    def collect(self) -> Iterator[Any]:
        gauge = GaugeMetricFamily(METRIC, "EnvoyFilter configPatches meshd leaves out of the config it serves "
                                  "(Envoy would reject them, or meshd cannot apply them), by EnvoyFilter and reason.",
                                  labels=("namespace", "name", "reason"))
        counts: dict[tuple[str, str, str], set[int]] = {}
        for row in self._rows():
            namespace, _, name = str(row["envoyFilter"]).partition("/")
            counts.setdefault((namespace, name, str(row["code"])), set()).add(int(row["patch"]))
        for labels, patches in sorted(counts.items()):
            gauge.add_metric(list(labels), len(patches))
        yield gauge
