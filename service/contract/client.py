"""The Kubernetes API client both sides use: the in-cluster service account, else KUBECONFIG."""

import os


def load_api_client(kubeconfig: str | None = None):
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig is None and not os.environ.get("KUBECONFIG") and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        # read KUBECONFIG now: the client library reads it once, at import
        config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"), client_configuration=cfg)
    # urllib3 would retry each request 3 times, multiplying the timeout a slow apiserver costs the boot;
    # our callers retry on their own schedule.
    cfg.retries = False
    return client.ApiClient(cfg)
