"""What the proxies report about their traffic: Envoy's metrics service (`StreamMetrics`),
the few counters meshd keeps per proxy, and their Istio-named Prometheus metrics.

    counters.py  one report (Envoy's stats, full names) -> the counters meshd keeps
    store.py     per connected proxy: the last two reports, bounded; rates and recency
    service.py   the gRPC service on the authenticated xDS port
    istio_metrics.py  istio_requests_total and friends from the store
"""
