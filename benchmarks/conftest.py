"""`pytest benchmarks --benchmark-enable` collects the bench_*.py scripts too (pytest
looks only for test_*.py by default), so their pytest-benchmark functions run."""
import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
