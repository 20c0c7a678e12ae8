"""The suite's own scheduling: under `pytest -n N --dist loadgroup` (make test), tests
that share a module-scoped fixture go to one worker, so a trained repository is built
once. conftest.py marks them with xdist_group; this checks the mark took effect (with
pytest 9.2 and pytest-xdist 3.8 it silently did not, and every e2e fixture ran twice)."""
import os

import pytest


@pytest.fixture(scope="module")
def shared():
    return os.getpid()


@pytest.mark.parametrize("turn", [1, 2])
def test_tests_sharing_a_module_fixture_run_as_one_group(shared, turn, request):
    if not getattr(request.config.option, "loadgroup", False):  # set on xdist workers
        pytest.skip("runs only under --dist loadgroup, as make test runs the suite")
    assert request.node.nodeid.endswith(f"@{__name__}"), request.node.nodeid
    assert shared == os.getpid()
