"""Who wrote a field, as the apiserver's managedFields record it. A client names its own field manager,
so this means something only because the admission policy lets no one but the controller's
ServiceAccount write as CONTROLLER_MANAGER (deploy/manifests/cluster/admission-policy.yaml)."""

CONTROLLER_MANAGER = "kvmemo-controller"


def owned_by(configmap: dict, manager: str, section: str, key: str) -> bool:
    """True when `manager` owns `section[key]` (e.g. data, kv-cache-plan.<fp12>) of this ConfigMap."""
    for entry in (configmap.get("metadata") or {}).get("managedFields") or []:
        fields = (entry.get("fieldsV1") or {}).get(f"f:{section}") or {}
        if entry.get("manager") == manager and f"f:{key}" in fields:
            return True
    return False
