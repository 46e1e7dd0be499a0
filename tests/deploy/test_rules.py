"""Alert rules: promtool checks them and runs their unit tests (deploy/prometheus/tests)."""

from tests.deploy.render import ROOT, run

RULES = ROOT / "deploy" / "prometheus"


def test_rules_check(promtool):
    p = run([promtool, "check", "rules", str(RULES / "kvmemo-rules.yaml")])
    assert p.returncode == 0, p.stdout + p.stderr


def test_rules_unit_tests(promtool):
    tests = sorted(str(p) for p in (RULES / "tests").glob("*.yaml"))
    assert tests
    p = run([promtool, "test", "rules", *tests])
    assert p.returncode == 0, p.stdout + p.stderr
