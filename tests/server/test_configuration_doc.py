"""docs/configuration.md is what scripts/configuration_doc.py renders from the settings class now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omnilive.server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "configuration_doc.py"
DOC = ROOT / "docs" / "configuration.md"


def load_script():
    spec = importlib.util.spec_from_file_location("configuration_doc", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_doc_is_up_to_date():
    rendered = load_script().render()
    assert DOC.exists() and DOC.read_text() == rendered, (
        "docs/configuration.md is out of date with src/omnilive/server/settings.py or src/omnilive/cli.py: "
        "run `python scripts/configuration_doc.py --write`"
    )


def test_every_setting_is_documented_with_its_flag():
    script = load_script()
    text = DOC.read_text()
    flags = script.serve_flags()
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name}: add Field(description=...)"
        row = next((line for line in text.splitlines() if line.startswith(f"| `OMNILIVE_{name.upper()}` |")), None)
        assert row is not None, f"OMNILIVE_{name.upper()} is missing from docs/configuration.md"
        if name in flags:
            assert flags[name] in row
    assert {"port", "api_key", "data_dir", "cors_origins"} <= set(flags)  # the parser was read, not guessed
