"""The ConfigMap contract between pods and the controller (shared/DESIGN.md), in one torch-free package
that both sides import: key names and limits (`keys`), one typed parser per record (`records`: Report,
OomEvent, Plan), the pods' merge (`merge`) and the API-client loader (`client`).

Nothing here may import torch, prometheus_client or service.engine/memory/server: the controller ships
without them (tests/k8s/test_imports.py holds that)."""
