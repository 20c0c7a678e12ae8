"""The shipped backbone measurements (cnnspec/layers/backbone_facts.json) equal a fresh
measurement with the installed torchvision, and let `cnnspec summary` skip torch."""
import json

from cnnspec.layers.backbone import BACKBONE_FACTS
from scripts.backbone_facts import measure_all
from tests.no_torch import run_without_torch


def test_shipped_facts_match_a_fresh_measurement():
    shipped = json.loads(BACKBONE_FACTS.read_text())
    assert shipped == measure_all(), "re-run: python scripts/backbone_facts.py"


def test_summary_of_a_backbone_spec_does_not_import_torch():
    done = run_without_torch("from cnnspec import cli; cli.main(['summary', 'specs/resnet50_transfer.yaml'])")
    assert "Total params: 25,669,578" in done.stdout
