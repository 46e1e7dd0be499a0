import pytest

from service import faults
from service.errors import ConfigError


def test_faults_parse_and_reject_what_they_do_not_know():
    assert faults.parse("") == {}
    assert faults.parse("step_delay_seconds=0.5,boot_gate=/tmp/g") == {"step_delay_seconds": 0.5, "boot_gate": "/tmp/g"}
    assert faults.parse("step_hold=/tmp/h") == {"step_hold": "/tmp/h"}
    with pytest.raises(ConfigError, match="unknown fault 'explode'"):
        faults.parse("explode=1")
    with pytest.raises(ConfigError, match="step_delay_seconds='soon'"):
        faults.parse("step_delay_seconds=soon")
