"""Publishing memory reports and OOM events to the kvmemo ConfigMap, and reading plans from it."""

from service.publish.configmap import ConfigMapStore, PublishError, load_api_client
from service.publish.hooks import ConfigMapPlans
from service.publish.publisher import PUBLISH_FAILURES, Publisher

__all__ = ["ConfigMapPlans", "ConfigMapStore", "PUBLISH_FAILURES", "PublishError", "Publisher", "load_api_client"]
