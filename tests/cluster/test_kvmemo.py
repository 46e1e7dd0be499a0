"""kvmemo on a real cluster, with the images built from this tree: the chart installs under the restricted
Pod Security Standard, pods remember their memory plan across deletes and scale-outs, clients reach it
through its Service, a delete drains in-flight streams, the controller fails over, the plain manifests
give the same, and a settings change profiles again. The tests share one release and run in order."""

import json
import subprocess
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from kubernetes.utils import parse_quantity

from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc
from tests.cluster import containerd
from tests.cluster.workloads import (CONTROLLER, SERVER, fingerprint, helm, image_values, log, log_until, plans,
                                     pods, ready_pods, samples, seconds_to_ready, wait_for)
from tests.k8s.kube import REPO
from tests.progress import TERMINAL, say
from tests.server.conftest import kvmemo_command
from tests.tools import grpcurl

CHART = REPO / "deploy" / "helm" / "kvmemo"
RELEASE = "kvmemo"
GRPC_PORT, METRICS_PORT, CONTROLLER_PORT = 50051, 8000, 8081
# The node has 2 CPUs: the chart's default request of one CPU per pod would leave the scaled-out pods Pending.
# The default model's 8,192-token context times 64 sequences would give each pod the CPU default's 4 GiB of
# KV cache, more than this machine holds for the four or five pods the tests run at once: the release's pods
# keep 16 sequences of 256 tokens (189 MB), and run steps of at most 256 tokens (a pod's profile runs a step
# of the whole token budget: 2,048 tokens take seconds on these CPUs). Test 7 runs the chart's defaults, and
# measures them.
SMALL = ("--set", "resources.requests.cpu=100m", "--set", "resources.requests.memory=1536Mi",
         "--set", "serving.maxModelLen=256", "--set", "serving.maxNumSeqs=16", "--set", "serving.maxNumBatchedTokens=256")
QUESTION, PROMPT = "What is the capital of France?", "The capital of France is"  # SmolLM2 answers "Paris"
# While this file exists in a pod, its engine steps wait (service/faults.py): test 5 holds a stream in flight
# across the pod's deletion however fast the machine generates, then lets it finish.
STEP_HOLD = "/tmp/kvmemo-step-hold"
FAULTS = ("--set", "env[0].name=KVMEMO_FAULTS", "--set", f"env[0].value=step_hold={STEP_HOLD}")
# Test 5's stream must finish inside the drain's grace, and on a loaded 2-core machine 200 tokens of a pod
# with a tenth of a CPU can take longer than the default 30 s. The drain ends as soon as no request is in
# flight, so a long grace costs nothing when the machine is fast.
DRAIN = ("--set", "serving.drainGraceSeconds=600")


@pytest.fixture(scope="module")
def release(kube_cluster, kvmemo_images):
    namespace = "kvmemo-chart"
    kube_cluster.kubectl("create", "namespace", namespace)
    kube_cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    kube_cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", namespace, "--timeout=120s")
    yield namespace
    helm(kube_cluster, "uninstall", RELEASE, "-n", namespace, "--wait", "--timeout=5m", check=False)
    kube_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _service_address(cluster, namespace: str) -> str:
    ip = cluster.kubectl("get", "service", RELEASE, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").stdout
    return f"{ip}:{GRPC_PORT}"


def _memory(cluster, namespace: str, pod: dict) -> tuple[int, int, str]:
    """A server pod's resident memory and limit (bytes), and a line saying them with its KV cache and the
    peak its memory cgroup saw (the profiling boot's peak, where it profiled)."""
    def metric(name: str) -> int:
        return int(sum(value for _, value in samples(pod, METRICS_PORT, name)))
    rss, kv = metric("process_resident_memory_bytes"), metric("kvmemo_kv_cache_memory_bytes")
    limit = int(parse_quantity(pod["spec"]["containers"][0]["resources"]["limits"]["memory"]))
    peak = cluster.kubectl("exec", "-n", namespace, pod["metadata"]["name"], "--", "cat",
                           "/sys/fs/cgroup/memory/memory.max_usage_in_bytes", check=False).stdout.strip()
    gib = lambda n: f"{n / (1 << 30):.2f} GiB"  # noqa: E731
    line = (f"RSS {gib(rss)}, KV cache {gib(kv)}, cgroup peak {gib(int(peak)) if peak.isdigit() else 'unread'}, "
            f"limit {gib(limit)}")
    return rss, limit, line


def test_1_helm_install_both_deployments_ready_through_grpc_probes(kube_cluster, kvmemo_images, release):
    helm(kube_cluster, "install", RELEASE, str(CHART), "-n", release, *image_values(kvmemo_images), *SMALL, *FAULTS,
          *DRAIN, "--wait", "--timeout=15m")
    for deployment in (RELEASE, f"{RELEASE}-controller"):
        kube_cluster.kubectl("rollout", "status", f"deployment/{deployment}", "-n", release, "--timeout=15m")
    (server,) = ready_pods(kube_cluster, release, SERVER, 1)
    container = server["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == GRPC_PORT, container[probe]
    ready_pods(kube_cluster, release, CONTROLLER, 2)


def test_2_replacement_pod_boots_from_the_plan(kube_cluster, release):
    (first,) = ready_pods(kube_cluster, release, SERVER, 1)
    first_log = log(kube_cluster, release, first)
    fp12 = fingerprint(first_log)
    assert "profiling memory" in first_log, first_log[-3000:]
    plan = wait_for(lambda: plans(kube_cluster, release).get(fp12), f"the controller's plan for {fp12}")
    assert plan["kv_cache_memory_bytes"] > 0

    kube_cluster.kubectl("delete", "pod", "-n", release, first["metadata"]["name"])
    (second,) = ready_pods(kube_cluster, release, SERVER, 1)
    second_log = log(kube_cluster, release, second)
    assert "skipped profiling" in second_log, second_log[-3000:]
    plan_info = samples(second, METRICS_PORT, "kvmemo_kv_cache_plan_info")
    assert any(labels["source"] == "configmap" and value == 1 for labels, value in plan_info), plan_info
    (skipped,) = [line for line in second_log.splitlines() if "skipped profiling" in line]
    say(TERMINAL, f"cluster: first pod Ready {seconds_to_ready(first):.0f} s after its start (profiled), "
                  f"its replacement {seconds_to_ready(second):.0f} s (from the plan; {_memory(kube_cluster, release, second)[2]}):"
                  f"\n  {skipped}")


def test_3_scaled_out_pods_boot_from_the_plan(kube_cluster, release):
    kube_cluster.kubectl("scale", f"deployment/{RELEASE}", "-n", release, "--replicas=3")
    for pod in ready_pods(kube_cluster, release, SERVER, 3):
        assert "skipped profiling" in log(kube_cluster, release, pod)


def test_4_clients_get_text_through_the_service(kube_cluster, release):
    """The chart's default model, greedy: every client gets SmolLM2's answer, which names Paris."""
    address = _service_address(kube_cluster, release)
    kvmemo = kvmemo_command()
    chat = subprocess.run([*kvmemo, "chat", "--server", address, "--temperature", "0", "--max-tokens", "24", QUESTION],
                          capture_output=True, text=True, timeout=120)
    assert chat.returncode == 0 and "Paris" in chat.stdout, (chat.stdout, chat.stderr)
    generated = subprocess.run([*kvmemo, "generate", "--server", address, "--temperature", "0", "--max-tokens", "8",
                                PROMPT], capture_output=True, text=True, timeout=120)
    assert generated.returncode == 0 and "Paris" in generated.stdout, (generated.stdout, generated.stderr)

    body = json.dumps({"text": PROMPT, "max_tokens": 8, "sampling": {"temperature": 0}})
    curl = subprocess.run([str(grpcurl()), "-plaintext", "-d", body, address, "kvmemo.v1.KvmemoService/Complete"],
                          capture_output=True, text=True, timeout=120)
    assert curl.returncode == 0, curl.stderr
    assert "Paris" in json.loads(curl.stdout)["text"], curl.stdout

    client = triton.InferenceServerClient(address)
    model = yaml.safe_load((CHART / "values.yaml").read_text())["model"]["name"]
    assert client.is_model_ready(model)
    inputs = []
    sampling = json.dumps({"max_tokens": 8, "temperature": 0}).encode()
    for name, datatype, value in (("text_input", "BYTES", PROMPT.encode()), ("stream", "BOOL", False),
                                  ("sampling_parameters", "BYTES", sampling)):
        tensor = triton.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.array([value], dtype=object if datatype == "BYTES" else bool))
        inputs.append(tensor)
    (text,) = client.infer(model, inputs).as_numpy("text_output")
    assert text.startswith(PROMPT.encode()) and b"Paris" in text[len(PROMPT):], text
    client.close()
    say(TERMINAL, f"cluster: kvmemo chat {QUESTION!r} through the Service: {chat.stdout.strip()!r}")


def _exit_codes(cluster, namespace: str, name: str, found: list, stop: threading.Event) -> None:
    """Watch one pod until it is gone, collecting its container's exit code from the last status the kubelet
    wrote before the pod's object was removed."""
    proc = subprocess.Popen(["kubectl", f"--kubeconfig={cluster.kubeconfig}", "get", "pod", name, "-n", namespace,
                             "--watch", "--output-watch-events", "-o", "json"], stdout=subprocess.PIPE, text=True)
    decoder, buffer = json.JSONDecoder(), ""
    for line in proc.stdout:
        buffer += line
        try:
            event, end = decoder.raw_decode(buffer.lstrip())
        except json.JSONDecodeError:
            continue
        buffer = buffer.lstrip()[end:]
        for status in event["object"].get("status", {}).get("containerStatuses", []):
            terminated = status.get("state", {}).get("terminated")
            if terminated:
                found.append(terminated["exitCode"])
        if event["type"] == "DELETED" or stop.is_set():
            break
    proc.kill()


def test_5_delete_during_a_stream_drains_it_and_exits_0(kube_cluster, release):
    victim = ready_pods(kube_cluster, release, SERVER, 3)[0]
    name = victim["metadata"]["name"]
    codes, stop = [], threading.Event()
    watcher = threading.Thread(target=_exit_codes, args=(kube_cluster, release, name, codes, stop))
    watcher.start()
    request = pb.GenerateRequest(text="Tell me a long story", max_tokens=200, sampling=pb.SamplingParameters(temperature=0),
                                 stop=pb.StopConditions(ignore_eos=True))
    follow = subprocess.Popen(["kubectl", f"--kubeconfig={kube_cluster.kubeconfig}", "logs", "-f", "-n", release, name],
                              stdout=subprocess.PIPE, text=True)
    kube_cluster.kubectl("exec", "-n", release, name, "--", "touch", STEP_HOLD)
    with grpc.insecure_channel(f"{victim['status']['podIP']}:{GRPC_PORT}") as channel:
        stream = pb_grpc.KvmemoServiceStub(channel).Generate(request, timeout=300)
        pod_log = log_until(follow, "engine step held")  # the pod's log as it is written
        kube_cluster.kubectl("delete", "pod", "-n", release, name, "--wait=false")
        pod_log += log_until(follow, "draining:")  # SIGTERM comes after the preStop sleep
        assert "1 requests in flight" in pod_log[-1], "".join(pod_log[-30:])
        kube_cluster.kubectl("exec", "-n", release, name, "--", "rm", STEP_HOLD)
        tokens = 0
        last = None
        for last in stream:
            tokens += len(last.token_ids)
    watcher.join(900)
    stop.set()
    follow.kill()
    assert last.finish_reason == pb.FINISH_REASON_LENGTH and tokens == 200
    assert codes and codes[-1] == 0, codes
    ready_pods(kube_cluster, release, SERVER, 3)


def _leader(cluster, namespace: str) -> str:
    return cluster.kubectl("get", "lease", "kvmemo-controller", "-n", namespace,
                           "-o", "jsonpath={.spec.holderIdentity}").stdout


def test_6_standby_controller_takes_over_from_a_deleted_leader(kube_cluster, release):
    leader = wait_for(lambda: _leader(kube_cluster, release), "a controller leader")
    kube_cluster.kubectl("delete", "pod", "-n", release, leader)
    successor = wait_for(lambda: (lambda h: h if h and h != leader else None)(_leader(kube_cluster, release)),
                         "the standby taking the Lease")
    controllers = ready_pods(kube_cluster, release, CONTROLLER, 2)
    assert successor in {p["metadata"]["name"] for p in controllers}

    assert _leaders(controllers) == [successor]


def _leaders(controllers: list[dict]) -> list[str]:
    return [p["metadata"]["name"] for p in controllers
            if any(v == 1 for _, v in samples(p, CONTROLLER_PORT, "kvmemo_controller_is_leader"))]


def _plans_written(controller: dict) -> float:
    return sum(v for labels, v in samples(controller, CONTROLLER_PORT, "kvmemo_controller_reconcile_total")
               if labels["result"] == "written")


def _full_name(image: str) -> str:
    """What containerd calls an image that a manifest names without a registry."""
    if "/" not in image:
        return f"docker.io/library/{image}"
    return image if "." in image.split("/", 1)[0] or image.startswith("localhost/") else f"docker.io/{image}"


def test_7_plain_manifests_give_the_same_result(kube_cluster, kvmemo_images, release):
    """The base is the chart with its default values (tests/deploy compares their objects): here its pod serves
    the default model with the default settings, profiles, fits its memory limit, and gets its plan. The
    release's pods have settings of their own (SMALL), so this pod's fingerprint is a new one."""
    kube_cluster.kubectl("scale", f"deployment/{RELEASE}", "-n", release, "--replicas=1")  # memory for this pod
    ready_pods(kube_cluster, release, SERVER, 1)
    chart_plans = plans(kube_cluster, release)
    rendered = yaml.safe_load_all(kube_cluster.kubectl("kustomize", str(REPO / "deploy" / "manifests" / "base")).stdout)
    for doc in rendered:
        if doc and doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                archive = kvmemo_images.controller if "controller" in container["image"] else kvmemo_images.service
                containerd.ctr(kube_cluster.workdir).tag(archive.ref, _full_name(container["image"]))
    namespace = "kvmemo-manifests"
    kube_cluster.kubectl("create", "namespace", namespace)
    kube_cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    kube_cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", namespace, "--timeout=120s")
    try:
        kube_cluster.kubectl("apply", "-k", str(REPO / "deploy" / "manifests" / "base"), "-n", namespace)
        for deployment in ("kvmemo", "kvmemo-controller"):
            kube_cluster.kubectl("rollout", "status", f"deployment/{deployment}", "-n", namespace, "--timeout=15m")
        (server,) = ready_pods(kube_cluster, namespace, SERVER, 1)
        ready_pods(kube_cluster, namespace, CONTROLLER, 2)
        server_log = log(kube_cluster, namespace, server)
        fp12 = fingerprint(server_log)
        boot_line = server_log.split(f"fingerprint {fp12} ", 1)[1].splitlines()[0]
        assert "smollm2-135m-instruct" in boot_line and "max_model_len=8192" in boot_line, boot_line
        assert "profiling memory" in server_log and fp12 not in chart_plans, (fp12, list(chart_plans))
        plan = wait_for(lambda: plans(kube_cluster, namespace).get(fp12), "the plan in the manifests' ConfigMap")
        assert plan["kv_cache_memory_bytes"] > 0
        rss, limit, memory = _memory(kube_cluster, namespace, server)
        assert rss < limit, memory
        say(TERMINAL, f"cluster: the defaults' pod (the base) Ready {seconds_to_ready(server):.0f} s after its start "
                      f"(profiled), {memory}; its plan {plan['kv_cache_memory_bytes'] / (1 << 30):.2f} GiB")
    finally:
        kube_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_8_a_settings_change_gets_a_new_fingerprint_and_profiles(kube_cluster, release):
    """After test 6's failover: the new report becomes a plan, written by the new leader alone."""
    (old_fp12,) = plans(kube_cluster, release)
    helm(kube_cluster, "upgrade", RELEASE, str(CHART), "-n", release, "--reuse-values",
          "--set", "serving.maxNumSeqs=32", "--wait", "--timeout=15m")
    kube_cluster.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", release, "--timeout=15m")
    (pod,) = ready_pods(kube_cluster, release, SERVER, 1)
    pod_log = log(kube_cluster, release, pod)
    new_fp12 = fingerprint(pod_log)
    assert new_fp12 != old_fp12
    assert "profiling memory" in pod_log, pod_log[-3000:]
    now = wait_for(lambda: (lambda p: p if new_fp12 in p else None)(plans(kube_cluster, release)),
                   f"the plan for {new_fp12}")
    assert old_fp12 in now  # the old pods' plan stays

    controllers = ready_pods(kube_cluster, release, CONTROLLER, 2)
    (leader,) = _leaders(controllers)
    written = {p["metadata"]["name"]: _plans_written(p) for p in controllers}
    assert written[leader] >= 1 and sum(written.values()) == written[leader], written
