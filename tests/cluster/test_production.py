"""What a platform team does to kvmemo after the first install, on a real cluster (issue 13): a second
namespace beside the first with default values, whose policy outlives the first release; a `helm upgrade`
that keeps the plans; a kubelet restart once engine steps keep failing; and a SIGTERM that sends GOAWAY while
a stream finishes, with a round_robin client moving to the other replica. The tests share one release (the
second namespace's) and run in order."""

import json
import threading
import time

import grpc
import pytest
import yaml

from service.proto.kvmemo.v1 import kvmemo_pb2 as pb
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc
from tests.cluster.workloads import (SERVER, create_namespace, fingerprint, follow_log, helm, image_values, log,
                                     log_until, plans, pod, ready, ready_pods, restart_count, samples,
                                     seconds_to_ready, wait_for)
from tests.k8s.kube import REPO
from tests.progress import TERMINAL, say

CHART = REPO / "deploy" / "helm" / "kvmemo"
RELEASE = "kvmemo"  # the admission policy names the ServiceAccounts kvmemo and kvmemo-controller
FIRST, SECOND = "kvmemo-first", "kvmemo-second"
POLICY = "kvmemo-configmap-guard"
GRPC_PORT, METRICS_PORT = 50051, 8000
# The node has 2 CPUs: the chart's default request of one CPU per pod would leave a second replica Pending.
SMALL = ("--set", "resources.requests.cpu=100m", "--set", "resources.requests.memory=512Mi")
# service/faults.py, armed by the upgrade of test 2 and idle until a test creates the file in a pod: while
# STEP_HOLD exists the pod's engine steps wait; once FAIL_STEPS exists every step raises.
STEP_HOLD, FAIL_STEPS = "/tmp/kvmemo-step-hold", "/tmp/kvmemo-fail-steps"
UPGRADE = {
    "podAnnotations": {"tests.kvmemo.io/upgraded": "1"},
    "replicaCount": 2,
    "env": [{"name": "KVMEMO_FAULTS", "value": f"step_hold={STEP_HOLD},step_failure_gate={FAIL_STEPS}"}],
    # The drain outlasts whatever test 4 does while its stream is held; the liveness probe is the chart's,
    # probed every 5 s instead of 20 s to spare CI time (failureThreshold stays the chart's default).
    "serving": {"drainGraceSeconds": 120},
    "livenessProbe": {"periodSeconds": 5},
}
FAILURES = yaml.safe_load((CHART / "values.yaml").read_text())["serving"]["maxConsecutiveStepFailures"]


def _request(max_tokens: int) -> pb.GenerateRequest:
    """Always ends by length, whatever the model: every request of these tests counts as `length`."""
    return pb.GenerateRequest(text="Tell me a story", max_tokens=max_tokens,
                              sampling=pb.SamplingParameters(temperature=0), stop=pb.StopConditions(ignore_eos=True))


def _short() -> pb.GenerateRequest:
    return _request(4)


def _long() -> pb.GenerateRequest:
    return _request(200)


def _policy_owner(cluster) -> tuple[str, str] | None:
    """(release, namespace) of the Helm release that rendered the admission policy; None when there is none."""
    found = cluster.kubectl("get", "validatingadmissionpolicy", POLICY, "-o", "json", check=False)
    if found.returncode != 0:
        return None
    annotations = json.loads(found.stdout)["metadata"].get("annotations", {})
    return annotations.get("meta.helm.sh/release-name", ""), annotations.get("meta.helm.sh/release-namespace", "")


def _forget_a_kept_policy(cluster) -> None:
    """A policy that an uninstalled release left behind (test_kvmemo.py's, in a full run): deleted, so that
    test 1's first release is the one that creates and owns it."""
    owner = _policy_owner(cluster)
    if owner and helm(cluster, "status", owner[0], "-n", owner[1], check=False).returncode != 0:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            cluster.kubectl("delete", kind, POLICY, "--wait=true")


@pytest.fixture(scope="module")
def second(kube_cluster, kvmemo_images):
    """The namespace of the release that tests 2-4 use; the first namespace lives only in test 1."""
    _forget_a_kept_policy(kube_cluster)
    for namespace in (FIRST, SECOND):
        create_namespace(kube_cluster, namespace)
    yield SECOND
    for namespace in (FIRST, SECOND):
        kube_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _as_pod_account(cluster, namespace: str, *args: str):
    """A server-side dry run (admission runs, nothing is written) of a write as the namespace's pod ServiceAccount."""
    return cluster.kubectl(f"--as=system:serviceaccount:{namespace}:{RELEASE}", "-n", namespace, *args,
                           "--dry-run=server", check=False)


def _denied_by_the_policy(cluster, namespace: str, *args: str) -> str:
    """The policy's message; waits only for a policy the apiserver has not loaded yet."""
    answer = wait_for(lambda: (lambda a: a if a.returncode != 0 else None)(_as_pod_account(cluster, namespace, *args)),
                      f"the admission policy denying kubectl {' '.join(args)}", timeout=120)
    assert f"ValidatingAdmissionPolicy '{POLICY}'" in answer.stderr, answer.stderr
    return answer.stderr


def test_1_a_second_namespace_installs_with_defaults_and_keeps_its_guard(kube_cluster, kvmemo_images, second):
    """The first release renders the cluster-wide policy; it only has to own it, so it runs no pods (CI
    time). The second installs with default values, and uninstalling the first leaves the policy in place."""
    helm(kube_cluster, "install", RELEASE, str(CHART), "-n", FIRST, *image_values(kvmemo_images),
         "--set", "replicaCount=0", "--set", "controller.enabled=false", "--wait", "--timeout=5m")
    assert _policy_owner(kube_cluster) == (RELEASE, FIRST)

    started = time.monotonic()
    helm(kube_cluster, "install", RELEASE, str(CHART), "-n", second, *image_values(kvmemo_images), *SMALL,
         "--wait", "--timeout=15m")
    (server,) = ready_pods(kube_cluster, second, SERVER, 1)
    installed_in = time.monotonic() - started
    assert _policy_owner(kube_cluster) == (RELEASE, FIRST)  # the second release did not render it

    helm(kube_cluster, "uninstall", RELEASE, "-n", FIRST, "--wait", "--timeout=5m")
    assert _policy_owner(kube_cluster) == (RELEASE, FIRST)  # kept (helm.sh/resource-policy: keep)
    kube_cluster.kubectl("get", "validatingadmissionpolicybinding", POLICY)

    stderr = _denied_by_the_policy(kube_cluster, second, "patch", "configmap", RELEASE, "--type=merge",
                                   "-p", json.dumps({"data": {"kv-cache-plan.000000000000": "{}"}}))
    assert "only the kvmemo-controller ServiceAccount may add, change or remove kv-cache-plan.* keys" in stderr
    stderr = _denied_by_the_policy(kube_cluster, second, "annotate", "configmap", RELEASE,
                                   "kv-cache-plan.000000000000=x")
    assert "may change only kvmemo.io/report.* and kvmemo.io/oom.* annotations" in stderr
    # The denials are the policy's, not RBAC's: the same account may write what a pod writes.
    allowed = _as_pod_account(kube_cluster, second, "annotate", "configmap", RELEASE, "kvmemo.io/report.000000000000=x")
    assert allowed.returncode == 0, allowed.stderr
    say(TERMINAL, f"cluster: second namespace's release installed and Ready in {installed_in:.0f} s "
                  f"(its pod Ready {seconds_to_ready(server):.0f} s after its start, profiled)")


def test_2_an_upgrade_keeps_the_plans_and_rolled_pods_boot_from_them(kube_cluster, second, tmp_path):
    (first,) = ready_pods(kube_cluster, second, SERVER, 1)
    first_log = log(kube_cluster, second, first)
    assert "profiling memory" in first_log, first_log[-3000:]  # a new namespace's ConfigMap holds no plan yet
    fp12 = fingerprint(first_log)
    before = wait_for(lambda: (lambda p: p if fp12 in p else None)(plans(kube_cluster, second)),
                      f"the controller's plan for {fp12}")

    values = tmp_path / "upgrade.yaml"
    values.write_text(yaml.safe_dump(UPGRADE))
    started = time.monotonic()
    helm(kube_cluster, "upgrade", RELEASE, str(CHART), "-n", second, "--reuse-values", "-f", str(values),
         "--wait", "--timeout=15m")
    rolled = ready_pods(kube_cluster, second, SERVER, 2)
    rolled_in = time.monotonic() - started
    after = plans(kube_cluster, second)
    assert after.keys() == before.keys()
    assert after[fp12]["kv_cache_memory_bytes"] == before[fp12]["kv_cache_memory_bytes"]
    for server in rolled:
        assert server["metadata"]["annotations"]["tests.kvmemo.io/upgraded"] == "1"
        server_log = log(kube_cluster, second, server)
        assert fingerprint(server_log) == fp12
        assert "skipped profiling" in server_log, server_log[-3000:]
    say(TERMINAL, f"cluster: upgrade rolled to 2 pods from the plan in {rolled_in:.0f} s "
                  f"(pods Ready {', '.join(f'{seconds_to_ready(p):.0f}' for p in rolled)} s after their start)")


def _pod_when(cluster, namespace: str, name: str, condition, what: str) -> dict:
    return wait_for(lambda: (lambda found: found if condition(found) else None)(pod(cluster, namespace, name)), what)


def test_3_failing_engine_steps_fail_liveness_and_the_kubelet_restarts_the_container(kube_cluster, second):
    victim = ready_pods(kube_cluster, second, SERVER, 2)[0]
    name, restarts = victim["metadata"]["name"], restart_count(victim)
    probe = victim["spec"]["containers"][0]["livenessProbe"]
    assert probe["grpc"]["port"] == GRPC_PORT and probe["periodSeconds"] == 5, probe
    kube_cluster.kubectl("exec", "-n", second, name, "--", "touch", FAIL_STEPS)
    with grpc.insecure_channel(f"{victim['status']['podIP']}:{GRPC_PORT}") as channel:
        stub = pb_grpc.KvmemoServiceStub(channel)
        for _ in range(FAILURES):  # one request, one failed step
            with pytest.raises(grpc.RpcError) as err:
                stub.Complete(_short(), timeout=120)
            assert err.value.code() == grpc.StatusCode.INTERNAL, err.value
        broken_at = time.monotonic()
    restarted = _pod_when(kube_cluster, second, name, lambda p: restart_count(p) > restarts,
                          f"the kubelet restarting {name}'s container")
    restarted_in = time.monotonic() - broken_at
    previous = kube_cluster.kubectl("logs", "-n", second, name, "--previous").stdout
    assert f"not serving any more: {FAILURES} engine steps failed in a row" in previous, previous[-3000:]
    killing = json.loads(kube_cluster.kubectl("get", "events", "-n", second, "-o", "json",
                                              f"--field-selector=involvedObject.name={name},reason=Killing").stdout)
    assert any("failed liveness probe" in e["message"] for e in killing["items"]), killing["items"]

    # /tmp is an emptyDir, which outlives the container: the new one still finds the gate until it goes.
    wait_for(lambda: kube_cluster.kubectl("exec", "-n", second, name, "--", "rm", "-f", FAIL_STEPS,
                                          check=False).returncode == 0, f"{name}'s new container running")
    _pod_when(kube_cluster, second, name, lambda p: ready(p) and restart_count(p) == restart_count(restarted),
              f"{name} Ready again")
    ready_again_in = time.monotonic() - broken_at
    with grpc.insecure_channel(f"{victim['status']['podIP']}:{GRPC_PORT}") as channel:
        reply = pb_grpc.KvmemoServiceStub(channel).Complete(_short(), timeout=120)
    assert reply.finish_reason == pb.FINISH_REASON_LENGTH
    say(TERMINAL, f"cluster: {FAILURES} failed steps; the container restart seen {restarted_in:.0f} s later, "
                  f"the pod Ready and serving again {ready_again_in:.0f} s later")


def _round_robin(servers: list[dict]) -> grpc.Channel:
    """What a client of the headless Service does: every replica's address, round_robin over them."""
    target = "ipv4:" + ",".join(f"{p['status']['podIP']}:{GRPC_PORT}" for p in servers)
    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    return grpc.insecure_channel(target, options=[("grpc.service_config", config)])


def _answered(server: dict) -> float:
    """Requests the pod finished by length (all this test sends)."""
    return sum(v for labels, v in samples(server, METRICS_PORT, "kvmemo_request_success_total")
               if labels["finished_reason"] == "length")


def _read(stream, received: list, failures: list) -> None:
    try:
        received.extend(stream)
    except grpc.RpcError as e:
        failures.append(e)


def test_4_sigterm_sends_goaway_the_stream_finishes_and_new_rpcs_go_to_the_other_pod(kube_cluster, second):
    leaving, staying = ready_pods(kube_cluster, second, SERVER, 2)
    name = leaving["metadata"]["name"]
    with _round_robin([leaving, staying]) as channel:
        stub = pb_grpc.KvmemoServiceStub(channel)
        first = {p["metadata"]["name"]: _answered(p) for p in (leaving, staying)}

        def both_answered():
            assert stub.Complete(_short(), wait_for_ready=True, timeout=120).finish_reason == pb.FINISH_REASON_LENGTH
            return all(_answered(p) > first[p["metadata"]["name"]] for p in (leaving, staying))
        wait_for(both_answered, "round_robin reaching both pods")  # both connections are up

        kube_cluster.kubectl("exec", "-n", second, name, "--", "touch", STEP_HOLD)
        follow = follow_log(kube_cluster, second, name)
        results: list[list] = [[], []]
        failures: list[grpc.RpcError] = []
        # round_robin: one stream on each pod
        readers = [threading.Thread(target=_read, args=(stub.Generate(_long(), timeout=600), r, failures))
                   for r in results]
        for reader in readers:
            reader.start()
        pod_log = log_until(follow, "engine step held")
        wait_for(lambda: failures or any(r and r[-1].finish_reason for r in results),
                 "the stream on the other pod finishing")

        deleted_at = time.monotonic()
        kube_cluster.kubectl("delete", "pod", "-n", second, name, "--wait=false")
        pod_log += log_until(follow, "draining:")  # after the preStop sleep: SIGTERM, then GOAWAY
        assert "1 requests in flight" in pod_log[-1], "".join(pod_log[-30:])
        draining_in = time.monotonic() - deleted_at
        before = {"leaving": _answered(leaving), "staying": _answered(staying)}
        for _ in range(4):  # round_robin would send every other one to the leaving pod if it were still there
            reply = stub.Complete(_short(), wait_for_ready=True, timeout=120)
            assert reply.finish_reason == pb.FINISH_REASON_LENGTH
        assert _answered(staying) == before["staying"] + 4
        assert _answered(leaving) == before["leaving"]
        moved_in = time.monotonic() - deleted_at

        kube_cluster.kubectl("exec", "-n", second, name, "--", "rm", STEP_HOLD)
        for reader in readers:
            reader.join(300)
        follow.kill()
    assert not failures, failures
    for received in results:
        assert received[-1].finish_reason == pb.FINISH_REASON_LENGTH
        assert sum(len(m.token_ids) for m in received) == 200
    say(TERMINAL, f"cluster: GOAWAY {draining_in:.0f} s after the delete (preStop sleep included); 4 new RPCs done "
                  f"on the other pod {moved_in:.0f} s after it; the held stream then finished its 200 tokens")
