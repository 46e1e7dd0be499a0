"""Kubernetes API clients for a test control plane: admin, a service account's token, impersonation."""

from pathlib import Path

from kubernetes import client, config

from tests.envtest.controlplane import ControlPlane, write_kubeconfig


def admin_client(plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(plane.kubeconfig))


def service_account_token(plane: ControlPlane, namespace: str, name: str, seconds: int = 3600) -> str:
    """A bound token from the TokenRequest API, as the kubelet would mount it into a pod."""
    with admin_client(plane) as api:
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=seconds))
        answer = client.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, request)
        return answer.status.token


def token_kubeconfig(plane: ControlPlane, path: Path, namespace: str, name: str) -> Path:
    """A kubeconfig with the service account's token: KUBECONFIG=path makes a process act as the pod."""
    token = service_account_token(plane, namespace, name)
    return write_kubeconfig(path, plane.host, plane.files.ca_cert, user={"token": token})


def token_client(plane: ControlPlane, namespace: str, name: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = plane.host
    cfg.ssl_ca_cert = str(plane.files.ca_cert)
    cfg.api_key = {"authorization": service_account_token(plane, namespace, name)}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(cfg)


def impersonating_client(plane: ControlPlane, user: str, group: str | None = None) -> client.ApiClient:
    """Admin credentials acting as `user`; ApiClient's default headers hold one Impersonate-Group at most."""
    api = admin_client(plane)
    api.set_default_header("Impersonate-User", user)
    if group:
        api.set_default_header("Impersonate-Group", group)
    return api


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"
