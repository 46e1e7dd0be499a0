"""The one free_port for tests and benchmarks (it lives beside the Prometheus start-up that a user's tool,
deploy/grafana/backfill.py, needs without the tests)."""

from deploy.grafana.local_prometheus import free_port  # noqa: F401
