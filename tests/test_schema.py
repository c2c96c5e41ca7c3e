"""`nnspec schema`: the JSON Schema editors use agrees with the validator nnspec runs (pydantic, strict).

Every example and stdlib file the loader accepts is valid under it; every golden error spec is judged the same
way by the schema and by the pydantic models (a schema error there is a schema error here, with the same YAML
data), and the schema carries the descriptions editors show.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import yaml
from typer.testing import CliRunner

from nnspec.cli import app
from nnspec.spec.schema import SpecDoc

jsonschema = pytest.importorskip("jsonschema")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
GOLDEN = sorted((ROOT / "tests" / "golden" / "errors").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> object:
    run = CliRunner().invoke(app, ["schema"])
    assert run.exit_code == 0, run.output
    schema = json.loads(run.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _data(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return None


def test_every_example_is_valid(validator: object) -> None:
    assert EXAMPLES
    for path in EXAMPLES:
        errors = [e.message for e in validator.iter_errors(_data(path))]  # type: ignore[attr-defined]
        assert not errors, (path, errors)


def test_schema_and_validator_agree_on_every_golden_error(validator: object) -> None:
    schema_errors = 0
    for path in GOLDEN:
        data = _data(path)
        if not isinstance(data, dict):
            continue   # not YAML, or not a mapping: the loader reports it before any schema
        try:
            SpecDoc.model_validate(data)
            pydantic_ok = True
        except pydantic.ValidationError:
            pydantic_ok = False
        schema_ok = validator.is_valid(data)  # type: ignore[attr-defined]
        assert schema_ok == pydantic_ok, path.name
        schema_errors += not schema_ok
    assert schema_errors >= 8   # the unknown-key, missing-key and wrong-type goldens


def test_descriptions_and_modeline_documented(validator: object) -> None:
    schema = validator.schema  # type: ignore[attr-defined]
    assert "dims" in schema["properties"] and schema["properties"]["dims"]["description"]
    assert all(p.get("description") for p in schema["properties"].values())
    assert schema["additionalProperties"] is False   # an unknown top-level key is flagged in the editor
    assert "yaml-language-server: $schema=" in (ROOT / "docs" / "cli.md").read_text()


def test_schema_output_file(tmp_path: Path) -> None:
    run = CliRunner().invoke(app, ["schema", "-o", str(tmp_path / "s.json")])
    assert run.exit_code == 0, run.output
    assert json.loads((tmp_path / "s.json").read_text())["title"] == "SpecDoc"
