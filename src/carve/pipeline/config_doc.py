"""``config/README.md`` from the config schema: every key, its type, default and meaning, in one table per block.

The schema (``workflow/schemas/config.schema.yaml``) is the one place a key is defined; the README is rendered from
it (``make config-doc``) and a test keeps the two equal, as the snakemake-workflows catalogue expects a
``config/README.md`` beside the config.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

HEADER = """# carve configuration

Generated from `workflow/schemas/config.schema.yaml` by `make config-doc` (a test checks that they agree); do not
edit by hand. A config is a YAML file given with `snakemake --configfile my.yaml` (or `carve run --configfile
my.yaml`); any key can also be set with `--config key=value`. The schema is checked when the workflow is parsed:
an unknown key or a wrong value stops the run before any job, naming the key. `carve init FOLDER` writes a
starting config (the keys a user must set) from a folder of images and labels.

The cases sheet (`cases`) is described in the README ("Your own data") and checked against
`workflow/schemas/cases.schema.yaml`.
"""


def _type(spec: Mapping[str, Any]) -> str:
    if "enum" in spec:
        return " \\| ".join("null" if v is None else f"`{v}`" for v in spec["enum"])
    if "oneOf" in spec:
        return " or ".join(_type(s) for s in spec["oneOf"])
    kind = spec.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    if "array" in kinds and isinstance(spec.get("items"), Mapping):
        item = _type(spec["items"])
        kinds = [f"list of {item}" if k == "array" else k for k in kinds]
    return " or ".join(str(k) for k in kinds)


def _default(spec: Mapping[str, Any]) -> str:
    if "default" not in spec:
        return ""
    value = spec["default"]
    if isinstance(value, Mapping) and not value:
        return ""
    return f"`{json.dumps(value)}`"


def _text(spec: Mapping[str, Any]) -> str:
    text = " ".join(str(spec.get("description", "")).split())
    bounds = []
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in spec:
            bounds.append(f"{word} {spec[key]}")
    if bounds:
        text = f"{text} ({', '.join(bounds)})".strip()
    return text.replace("|", "\\|")


def _rows(properties: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name, spec in properties.items():
        yield f"{prefix}{name}", spec


def render_config_readme(schema: Mapping[str, Any]) -> str:
    """The markdown of ``config/README.md`` for ``schema``: top-level keys first, then one table per block."""
    lines = [HEADER, "## Top-level keys", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    blocks = []
    required = set(schema.get("required", ()))
    for key, spec in _rows(schema["properties"]):
        meaning = _text(spec) + (" **Required.**" if key in required else "")
        if spec.get("type") == "object" and "properties" in spec:
            blocks.append((key, spec))
            meaning = (meaning + f" See [`{key}`](#{key}).").strip()
        lines.append(f"| `{key}` | {_type(spec)} | {_default(spec)} | {meaning} |")
    for key, spec in blocks:
        lines += ["", f"## `{key}`", ""]
        if spec.get("description"):
            lines += [_text(spec), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, sub in _rows(spec["properties"], f"{key}."):
            lines.append(f"| `{name}` | {_type(sub)} | {_default(sub)} | {_text(sub)} |")
    return "\n".join(lines) + "\n"


def load_schema(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def main() -> int:
    repo = Path(__file__).resolve().parents[3]
    text = render_config_readme(load_schema(repo / "workflow" / "schemas" / "config.schema.yaml"))
    (repo / "config" / "README.md").write_text(text)
    print(f"wrote {repo / 'config' / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
