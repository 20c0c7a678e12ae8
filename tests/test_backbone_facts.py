"""The shipped backbone measurements (cnnspec/backbone_facts.json) equal a fresh
measurement with the installed torchvision, and let `cnnspec summary` skip torch."""
import json
import subprocess
import sys
from pathlib import Path

from cnnspec.layers import BACKBONE_FACTS
from scripts.backbone_facts import measure_all

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_facts_match_a_fresh_measurement():
    shipped = json.loads(BACKBONE_FACTS.read_text())
    assert shipped == measure_all(), "re-run: python scripts/backbone_facts.py"


def test_summary_of_a_backbone_spec_does_not_import_torch():
    code = ("import sys; from cnnspec import cli; cli.main(['summary', 'specs/resnet50_transfer.yaml']); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Total params: 25,669,578" in done.stdout
