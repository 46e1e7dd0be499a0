"""The controller image: `kvmemo controller` as the chart starts it, no torch, read-only root filesystem."""

from tests.images.containerd import Tmpfs

CHART_MOUNTS = (Tmpfs("/tmp"),)  # the controller Deployment mounts only /tmp


def test_imports_the_controller_without_torch(containerd, controller_ref):
    code = ("import importlib.util, sys; import controller.main, controller.loop, controller.watch, "
            "controller.leader, controller.http; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'), importlib.util.find_spec('torch'))")
    result = containerd.run(controller_ref, "python", "-c", code, read_only=True, mounts=CHART_MOUNTS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["[]", "None"]


def test_controller_command_parses_the_charts_arguments(containerd, controller_ref):
    result = containerd.run(controller_ref, "kvmemo", "controller", "--policy=fit-requested", "--plan-ttl=168h",
                            "--help", read_only=True, mounts=CHART_MOUNTS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--http-port" in result.stdout
