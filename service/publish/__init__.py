"""Publishing memory reports and OOM events to the kvmemo ConfigMap, and reading plans from it."""

from service.contract.client import load_api_client
from service.publish.configmap import ConfigMapStore, PublishError
from service.publish.publisher import PUBLISH_FAILURES, Publisher

__all__ = ["ConfigMapStore", "PUBLISH_FAILURES", "PublishError", "Publisher", "load_api_client"]
