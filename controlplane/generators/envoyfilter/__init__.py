"""EnvoyFilter patches, applied to a proxy's generated listeners, route configurations
and clusters as the last step of generation (docs/envoyfilter.md).

- select.py: which EnvoyFilters apply to a proxy, in order;
- merge.py: Istio's proto merge (typed_config merged by type);
- apply.py: every applyTo / match / operation;
- checks.py: what Envoy would reject, so such a patch is left out and reported.
"""
from __future__ import annotations

from .apply import Problem, apply
from .select import Selected, ordered, selects

__all__ = ["Problem", "Selected", "apply", "ordered", "selects"]
