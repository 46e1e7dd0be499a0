"""The Helm chart: lint, rendering over the values files in the chart's ci/ folder, the schema."""

import json
import shutil
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
    assert server["enableServiceLinks"] is False
    # Whatever the values, a rollout waits out the startup budget before it counts as stuck.
    deployment = by_kind_name(objs)[("Deployment", "kvmemo")]
    budget = container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
    assert deployment["spec"]["progressDeadlineSeconds"] > budget
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
    assert "--device=cuda" in container["args"]
    assert server["runtimeClassName"] == "nvidia"
    deployment = by_kind_name(objs)[("Deployment", "kvmemo")]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert deployment["spec"]["progressDeadlineSeconds"] == 15 * 80 + 300
    volumes = {v["name"]: v for v in server["volumes"]}
    assert volumes["kernel-cache"]["persistentVolumeClaim"] == {"claimName": "kvmemo-kernels"}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    # The controller keeps its own small image whatever the server's tag.
    controller = pod_specs(objs)["kvmemo-controller"]["containers"][0]
    assert controller["image"] == "kvmemo-controller:0.1.0"
    assert "--model=/models/Llama-3.2-1B-Instruct" in container["args"]
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
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
    ("model.source=pvc", "model.source=pvc needs model.pvc.claimName, or model.pvc.create=true"),
    ("model.source=download", "model.source=download needs model.download.image"),
    ("model.source=oci", "model.source=oci needs model.oci.image"),
    ("gpu.count=2", "gpu.count=2: the engine uses one GPU per pod (there is no tensor parallelism yet)"),
    ("autoscaling.hpa.enabled=true,autoscaling.keda.enabled=true", "KEDA makes its own HorizontalPodAutoscaler"),
    ("autoscaling.minReplicas=5", "autoscaling.minReplicas=5 is above autoscaling.maxReplicas=4"),
    ("model.source=pvc,model.pvc.create=true,replicaCount=2,model.pvc.accessModes={ReadWriteOnce}",
     "model.pvc.accessModes=[ReadWriteOnce]: replicas on different nodes cannot all mount such a claim"),
    ("readinessProbe.timeoutSecond=5", "at '/readinessProbe': additional properties 'timeoutSecond' not allowed"),
    ("terminationGraceMarginSeconds=5", "at '/terminationGraceMarginSeconds'"),
    ("controller.image.tag=1", "at '/controller/image/tag'"),
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


def server_container(objs: list[dict]) -> dict:
    return pod_specs(objs)["kvmemo"]["containers"][0]


def test_defaults_for_a_cpu_pod(helm):
    objs = helm_template(helm)
    server = pod_specs(objs)["kvmemo"]
    container = server["containers"][0]
    assert "--device=cpu" in container["args"]
    # The KV cache is sized from the memory limit: a smaller request would let the pod outgrow it.
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in container["env"]}
    assert env["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "requests.cpu"
    assert env["TRITON_CACHE_DIR"]["value"].startswith("/home/kvmemo/.cache/kernels/")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["kernel-cache"] == "/home/kvmemo/.cache/kernels"
    for volume in server["volumes"]:
        assert volume["emptyDir"]["sizeLimit"], volume
    # preStop sleeps while the endpoint removal propagates; the grace covers it, the drain and the margin.
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert server["terminationGracePeriodSeconds"] == 5 + 30 + 15
    assert "--max-consecutive-step-failures=3" in container["args"]
    # Liveness asks the health service the server turns NOT_SERVING after failed steps.
    assert container["livenessProbe"]["grpc"] == {"port": 50051}
    assert server["containers"][0]["name"] == "kvmemo"
    template = by_kind_name(objs)[("Deployment", "kvmemo")]["spec"]["template"]
    assert template["metadata"]["labels"]["kvmemo.io/model"] == "smollm2-135m-instruct"
    assert by_kind_name(objs)[("ConfigMap", "kvmemo")]["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"}
    env_with_limit = server_container(helm_template(helm, "--set", "resources.limits.cpu=3"))["env"]
    fields = {e["name"]: e for e in env_with_limit}
    assert fields["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"


def test_controller_placement_and_budget(helm):
    objs = helm_template(helm, "--set", "controller.nodeSelector.pool=system")
    spec = pod_specs(objs)["kvmemo-controller"]
    assert spec["containers"][0]["image"] == "kvmemo-controller:0.1.0"
    assert spec["nodeSelector"] == {"pool": "system"}
    term = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "controller"
    pdb = by_kind_name(objs)[("PodDisruptionBudget", "kvmemo-controller")]
    assert pdb["spec"]["minAvailable"] == 1
    one = by_kind_name(helm_template(helm, "--set", "controller.replicas=1"))
    assert ("PodDisruptionBudget", "kvmemo-controller") not in one, "one replica: a PDB would block every drain"


def test_extension_points(helm):
    objs = helm_template(helm, "-f", str(CHART / "ci" / "production-values.yaml"))
    kinds = by_kind_name(objs)
    deployment = kinds[("Deployment", "kvmemo")]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"] for e in container["env"]}
    assert {"HF_HUB_OFFLINE", "KVMEMO_CONFIGMAP"} <= env
    assert container["envFrom"] == [{"configMapRef": {"name": "kvmemo-extra-env", "optional": True}}]
    assert {"name": "extra", "mountPath": "/extra"} in container["volumeMounts"]
    assert container["readinessProbe"]["timeoutSeconds"] == 5
    assert container["livenessProbe"]["initialDelaySeconds"] == 10
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "inference"
    # The download writes into the claim the chart made, which the server then mounts read-only.
    download = spec["initContainers"][0]
    assert download["name"] == "model-download" and download["envFrom"][0]["secretRef"]["name"] == "model-store-credentials"
    assert {"name": "MODEL_DIR", "value": "/models/Llama-3.2-1B-Instruct"} in download["env"]
    assert "--model=/models/Llama-3.2-1B-Instruct" in container["args"]
    claim = kinds[("PersistentVolumeClaim", "kvmemo-model")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "kvmemo-model"}} in spec["volumes"]
    headless = kinds[("Service", "kvmemo-headless")]
    assert headless["spec"]["clusterIP"] == "None"
    assert kinds[("Service", "kvmemo")]["metadata"]["annotations"] == {"example.com/team": "inference"}
    hpa = kinds[("HorizontalPodAutoscaler", "kvmemo")]
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"] for m in hpa["spec"]["metrics"]}
    assert targets == {"kvmemo_requests_waiting": "4000m", "kvmemo_kv_cache_usage_ratio": "800m"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    policy = kinds[("NetworkPolicy", "kvmemo")]
    grpc_rule = next(r for r in policy["spec"]["ingress"] if r["ports"] == [{"port": "grpc"}])
    assert grpc_rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}]
    metrics_rule = next(r for r in policy["spec"]["ingress"] if r["ports"] == [{"port": "metrics"}])
    assert metrics_rule["from"] == [{"podSelector": {}}], "empty: the release's own namespace"
    assert ("NetworkPolicy", "kvmemo-controller") in kinds
    controller = pod_specs(objs)["kvmemo-controller"]
    assert controller["tolerations"][0]["key"] == "dedicated"


def test_gateway_keda_and_oci_model(helm):
    kinds = by_kind_name(helm_template(helm, "-f", str(CHART / "ci" / "gateway-values.yaml")))
    route = kinds[("GRPCRoute", "kvmemo")]
    assert route["spec"]["rules"] == [{"backendRefs": [{"name": "kvmemo", "port": 50051}]}]
    assert route["spec"]["parentRefs"][0]["name"] == "inference-gateway"
    scaled = kinds[("ScaledObject", "kvmemo")]
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    assert queries[0].startswith("sum(kvmemo_requests_waiting{") and queries[1].startswith("avg(kvmemo_kv_cache")
    assert "replicas" not in kinds[("Deployment", "kvmemo")]["spec"]
    spec = kinds[("Deployment", "kvmemo")]["spec"]["template"]["spec"]
    copy = spec["initContainers"][0]
    assert copy["image"] == "registry.example.com/models/llama-3.2-1b-instruct:v1"
    assert copy["command"] == ["cp", "-a", "/models/.", "/kvmemo-model/"]
    volume = helm_template(helm, "-f", str(CHART / "ci" / "gateway-values.yaml"), "--set", "model.oci.mount=volume")
    spec = pod_specs(volume)["kvmemo"]
    assert {"name": "model", "image": {"reference": "registry.example.com/models/llama-3.2-1b-instruct:v1",
                                       "pullPolicy": "IfNotPresent"}} in spec["volumes"]
    assert "initContainers" not in spec


def test_monitors_extra_labels_without_crds_and_no_leader_alert_without_controller(helm):
    objs = helm_template(helm, "--set", "monitoring.skipCRDCheck=true", "--set", "monitoring.additionalLabels.release=prom")
    monitors = [o for o in objs if o["kind"] in ("ServiceMonitor", "PodMonitor", "PrometheusRule")]
    assert len(monitors) == 3
    for o in monitors:
        assert o["metadata"]["labels"]["release"] == "prom", o["kind"]

    def alerts(objs):
        rule = next(o for o in objs if o["kind"] == "PrometheusRule")
        return {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "KvmemoNoControllerLeader" in alerts(objs)
    without = helm_template(helm, "--set", "monitoring.skipCRDCheck=true", "--set", "controller.enabled=false")
    assert "KvmemoNoControllerLeader" not in alerts(without) and "KvmemoOOM" in alerts(without)


def test_usable_as_a_subchart(helm, tmp_path):
    """Helm gives every subchart a `global` key; the strict schema must take it."""
    umbrella = tmp_path / "umbrella"
    (umbrella / "charts").mkdir(parents=True)
    (umbrella / "Chart.yaml").write_text("apiVersion: v2\nname: umbrella\nversion: 0.0.1\n")
    (umbrella / "values.yaml").write_text("global:\n  imageRegistry: registry.example.com\n")
    shutil.copytree(CHART, umbrella / "charts" / "kvmemo")
    p = run([helm, "template", "u", str(umbrella)])
    assert p.returncode == 0, p.stderr
    assert "kind: Deployment" in p.stdout


def test_headless_service_and_loadbalancer_ranges(helm):
    kinds = by_kind_name(helm_template(helm, "--set", "service.headless.enabled=true", "--set",
                                       "service.type=LoadBalancer", "--set", "service.loadBalancerSourceRanges={10.0.0.0/8}"))
    assert kinds[("Service", "kvmemo")]["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]
    headless = kinds[("Service", "kvmemo-headless")]["spec"]
    assert headless["clusterIP"] == "None" and "type" not in headless
