"""The Helm chart: lint, rendering over the values files in the chart's ci/ folder, the schema."""

import json
import re
import subprocess
import sys

import pytest

from tests.deploy.render import CHART, MONITOR_APIS, ROOT, by_kind_name, helm_template, pod_specs, run

VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
MONITOR_ARGS = [arg for api in MONITOR_APIS for arg in ("--api-versions", api)]


def test_lint(helm):
    for extra in [[]] + [["-f", str(f)] for f in VALUES_FILES]:
        p = run([helm, "lint", "--strict", str(CHART), *extra])
        assert p.returncode == 0, f"helm lint {extra}:\n{p.stdout}{p.stderr}"


def assert_restricted(name: str, spec: dict):
    """What the restricted Pod Security Standard checks, so a failure here names the field."""
    assert spec["securityContext"]["runAsNonRoot"] is True, name
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
        assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
        assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
        writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
        assert "/tmp" in writable, (name, c["name"])


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_values_files_render(helm, values):
    objs = helm_template(helm, "-f", str(values), *MONITOR_ARGS)
    for name, spec in pod_specs(objs).items():
        assert_restricted(name, spec)
    server = pod_specs(objs)["kvmemo"]
    container = server["containers"][0]
    drain = int(next(a.split("=")[1] for a in container["args"] if a.startswith("--drain-grace-seconds=")))
    assert server["terminationGracePeriodSeconds"] > drain
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "too short for a profiling first boot"
    env = {e["name"]: e for e in container["env"]}
    assert env["KVMEMO_CONFIGMAP"]["value"] == "kvmemo"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/home/kvmemo/.cache"}
    # Only the plan ConfigMap carries the label the controller selects on.
    labelled = [o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"
                and o["metadata"]["labels"].get("app.kubernetes.io/part-of") == "kvmemo"]
    assert labelled == ["kvmemo"]


def test_gpu_values(helm):
    objs = helm_template(helm, "-f", str(CHART / "ci" / "gpu-values.yaml"))
    server = pod_specs(objs)["kvmemo"]
    container = server["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-cuda")
    assert "--model=/models/Llama-3.2-1B-Instruct" in container["args"]
    assert server["volumes"][-1]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert by_kind_name(objs)[("Deployment", "kvmemo")]["spec"]["replicas"] == 3


def test_controller_off(helm):
    objs = by_kind_name(helm_template(helm, "-f", str(CHART / "ci" / "controller-off-values.yaml")))
    assert ("Deployment", "kvmemo-controller") not in objs
    assert ("ServiceAccount", "kvmemo-controller") not in objs
    assert ("PodDisruptionBudget", "kvmemo") not in objs
    assert "--kv-cache-memory-bytes=17179869184" in objs[("Deployment", "kvmemo")]["spec"]["template"]["spec"][
        "containers"][0]["args"]


def test_monitors_only_with_their_crds(helm):
    kinds = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not kinds & {o["kind"] for o in helm_template(helm)}
    objs = helm_template(helm, *MONITOR_ARGS)
    assert kinds <= {o["kind"] for o in objs}
    rule = next(o for o in objs if o["kind"] == "PrometheusRule")
    assert [r["alert"] for r in rule["spec"]["groups"][0]["rules"]][0] == "KvmemoOOM"


def test_dashboard_configmap(helm):
    cm = by_kind_name(helm_template(helm))[("ConfigMap", "kvmemo-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "app.kubernetes.io/part-of" not in cm["metadata"]["labels"]
    dashboard = json.loads(cm["data"]["kvmemo-dashboard.json"])
    assert dashboard == json.loads((ROOT / "deploy/grafana/kvmemo-dashboard.json").read_text())


def test_chart_copies_are_current():
    for source in ("deploy/grafana/kvmemo-dashboard.json", "deploy/prometheus/kvmemo-rules.yaml"):
        copy = CHART / "files" / source.rsplit("/", 1)[1]
        assert copy.read_bytes() == (ROOT / source).read_bytes(), f"{copy} is stale: run deploy/render-manifests.sh"


@pytest.mark.parametrize("setting, message", [
    ("serving.maxNumSeqs=0", "at '/serving/maxNumSeqs': minimum: got 0, want 1"),
    ("serving.gpuMemoryUtilization=1.5", "at '/serving/gpuMemoryUtilization'"),
    ("serving.blockSize=12", "at '/serving/blockSize'"),
    ("model.source=pvc", "at '/model/pvc/claimName': minLength"),
    ("model.source=nfs", "at '/model/source'"),
    ("controller.policy=greedy", "at '/controller/policy'"),
    ("controller.planTtl=soon", "at '/controller/planTtl'"),
    ("replicas=2", "additional properties 'replicas' not allowed"),
])
def test_bad_values_fail_with_a_clear_message(helm, setting, message):
    p = run([helm, "template", "kvmemo", str(CHART), "--set", setting])
    assert p.returncode != 0, f"--set {setting} was accepted"
    assert message in p.stderr, p.stderr


def cli_help(command: str) -> str:
    p = subprocess.run([sys.executable, "-m", "service.cli", command, "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_service_reads_the_configmap_name_from_the_env():
    """The chart names the ConfigMap in KVMEMO_CONFIGMAP; serve's flags fall back to KVMEMO_<FLAG>."""
    assert "[KVMEMO_CONFIGMAP]" in " ".join(cli_help("serve").split())


@pytest.mark.parametrize("command, deployment", [("serve", "kvmemo"), ("controller", "kvmemo-controller")])
def test_flags_exist_in_the_cli(helm, command, deployment):
    """Every flag the chart passes is one `kvmemo <command>` accepts."""
    objs = helm_template(helm, "-f", str(CHART / "ci" / "gpu-values.yaml"), "--set", "serving.enforceEager=true",
                         "--set", "serving.kvCacheMemoryBytes=1000000")
    args = pod_specs(objs)[deployment]["containers"][0]["args"]
    assert args[0] == command
    accepted = set(re.findall(r"--[a-z0-9-]+", cli_help(command)))
    passed = {a.split("=")[0] for a in args[1:]}
    assert passed <= accepted, f"kvmemo {command} does not accept {sorted(passed - accepted)}"
