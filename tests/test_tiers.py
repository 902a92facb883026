"""The suite's own rules (tests/conftest.py), run on small generated suites: the power-on count, the
budget, and stories that stop at their first failure."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
NO_QEMU = "import conftest\nconftest._launch[0] = lambda vm: vm  # counted, but nothing boots\n"


def suite(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_story=NO_QEMU + body)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-ra")


def test_a_module_that_boots_more_than_it_declares_fails(pytester: pytest.Pytester) -> None:
    r = suite(
        pytester,
        """
import pytest
from pathlib import Path
from imagemode.vm import qemu
pytestmark = pytest.mark.vm
POWER_ONS = 1

def test_boots_twice():
    vm = qemu.VM(Path("/nonexistent"))
    vm.start()
    vm.start()
""",
    )
    r.assert_outcomes(passed=1, errors=1)
    r.stdout.fnmatch_lines(["*test_story made 2 power-ons and declares POWER_ONS = 1*"])
    r.stdout.fnmatch_lines(["power-ons: 1 of a budget of *"])


def test_a_vm_module_must_declare_its_power_ons(pytester: pytest.Pytester) -> None:
    r = suite(pytester, "import pytest\npytestmark = pytest.mark.vm\ndef test_x():\n    pass\n")
    assert r.ret != 0
    r.stderr.fnmatch_lines(["*test_story: a vm module declares POWER_ONS = N*"])


def test_over_the_budget_nothing_runs(pytester: pytest.Pytester) -> None:
    r = suite(
        pytester, "import pytest\npytestmark = pytest.mark.vm\nPOWER_ONS = 99\ndef test_x():\n    pass\n"
    )
    assert r.ret != 0
    r.stderr.fnmatch_lines(["*99 power-ons (test_story 99): over the budget of *"])


def test_a_story_stops_at_its_first_failure(pytester: pytest.Pytester) -> None:
    r = suite(
        pytester,
        """
import pytest
pytestmark = [pytest.mark.vm, pytest.mark.incremental]
POWER_ONS = 0

def test_first():
    assert False, "the guest did not come back"

def test_then():
    raise AssertionError("must not run")
""",
    )
    r.assert_outcomes(failed=1, xfailed=1)
    r.stdout.fnmatch_lines(["*not run: test_first failed*"])
    r.stdout.no_fnmatch_line("*must not run*")


def test_unmarked_tests_are_the_unit_tier(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_a="def test_plain():\n    pass\n",
        test_b="import pytest\npytestmark = pytest.mark.host\ndef test_real():\n    pass\n",
    )
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "unit")
    r.assert_outcomes(passed=1, deselected=1)
