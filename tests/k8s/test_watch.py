"""The list-then-watch loop on the real apiserver: the initial list, then modifications through the watch."""

import threading

from kubernetes import client

from controller.watch import ConfigMapWatcher
from service.contract.keys import PART_OF_LABEL
from tests.k8s.kube import annotate, wait_for


def test_list_then_watch_sees_existing_and_changes(admin, namespace):
    seen = []
    watcher = ConfigMapWatcher(client.CoreV1Api(admin), namespace, PART_OF_LABEL,
                               lambda cm: seen.append(cm["metadata"]["resourceVersion"]), resync_seconds=2)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(lambda: True, stop), daemon=True)
    thread.start()
    try:
        wait_for(lambda: watcher.synced.is_set() and seen, what="the initial list")
        annotate(admin, namespace, {"kvmemo.io/report.abcdef012345": "{}"})
        rv = client.CoreV1Api(admin).read_namespaced_config_map("kvmemo", namespace).metadata.resource_version
        wait_for(lambda: rv in seen, what="the modification through the watch")
    finally:
        stop.set()
        thread.join(10)
