"""config/README.md says what the schema says (carve.pipeline.config_doc)."""

from __future__ import annotations

from pathlib import Path

import yaml

from carve.pipeline.config_doc import load_schema, render_config_readme

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def keys(properties: dict, prefix: str = "") -> list[str]:
    out = []
    for name, spec in properties.items():
        out.append(prefix + name)
        if spec.get("type") == "object" and "properties" in spec:
            out += keys(spec["properties"], f"{prefix}{name}.")
    return out


def test_config_readme_is_rendered_from_the_schema() -> None:
    assert (REPO / "config" / "README.md").read_text() == render_config_readme(load_schema(SCHEMA)), (
        "config/README.md is out of date: run `make config-doc`"
    )


def test_every_key_is_described_and_listed() -> None:
    schema = load_schema(SCHEMA)
    text = render_config_readme(schema)
    every = keys(schema["properties"])
    assert len(every) > 60
    for key in every:
        assert f"| `{key}` |" in text, key
    undescribed = [k for k in every if not _spec(schema, k).get("description")]
    assert not undescribed, f"schema keys without a description: {undescribed}"


def test_defaults_and_enums_are_shown() -> None:
    schema = {
        "properties": {
            "folds": {"type": "integer", "minimum": 2, "default": 5, "description": "folds"},
            "device": {"enum": ["auto", "cpu"], "default": "auto", "description": "where | how"},
        },
        "required": ["folds"],
    }
    text = render_config_readme(schema)
    assert "| `folds` | integer | `5` | folds (>= 2) **Required.** |" in text
    assert '| `device` | `auto` \\| `cpu` | `"auto"` | where \\| how |' in text


def _spec(schema: dict, key: str) -> dict:
    spec = {"properties": schema["properties"]}
    for part in key.split("."):
        spec = spec["properties"][part]
    return spec


def test_workflow_catalogue_file_names_the_config() -> None:
    catalogue = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    usage = catalogue["usage"]
    assert usage["software-stack-deployment"]["conda"] is True
    assert usage["report"] is True and "--configfile" in usage["mandatory-flags"]["flags"]
