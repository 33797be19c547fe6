"""Projection modules: a mistake in one is a ConfigError naming the module and the field."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from profilestore.errors import ConfigError, InvalidProjection
from profilestore.projection import load_projection

VALID = {
    "dataset": '"loyalty"',
    "reads": "(ConsentGiven,)",
    "section": "Loyalty",
    "fold": "fold",
    "default_refresh": '"every 5m"',
    "retention": '"everything"',
}


def projection_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **fields: str) -> str:
    """Write a projection module with ``fields`` (Python source) replacing valid ones; put it
    on ``sys.path`` and return its (unique) module name."""
    name = f"throwaway_{uuid.uuid4().hex[:8]}"
    arguments = "".join(f"    {key}={value},\n" for key, value in (VALID | fields).items())
    source = textwrap.dedent(
        """\
        import msgspec

        from profilestore.events import ConsentGiven, Event
        from profilestore.projection import Projection


        class Loyalty(msgspec.Struct, frozen=True, kw_only=True, gc=False):
            points: int = 0


        def fold(section: Loyalty, event: Event) -> Loyalty:
            return section


        """
    )
    (tmp_path / f"{name}.py").write_text(f"{source}PROJECTION = Projection(\n{arguments})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def load(module: str) -> ConfigError:
    with pytest.raises(ConfigError) as raised:
        load_projection(module, source="profilestore.toml", path="datasets.loyalty.projection")
    return raised.value


def test_a_valid_throwaway_module_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = projection_module(tmp_path, monkeypatch)
    projection = load_projection(module, source="config", path="datasets.loyalty.projection")
    assert projection.dataset == "loyalty"
    assert projection.topics == ("consent.given",)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("dataset", '"Loyalty Points"', "'Loyalty Points' must match"),
        ("dataset", "42", "42 must match"),
        ("default_refresh", '"hourly"', "'hourly' must be 'realtime', 'manual'"),
        ("reads", "[ConsentGiven]", "must be a tuple of event classes, not a list"),
        ("reads", "(ConsentGiven, str)", "holds <class 'str'>, which is not an event class"),
        ("reads", "(Event,)", "holds <class 'profilestore.events.Event'>, which is not"),
        ("section", "dict", "must be a msgspec Struct class"),
        ("section", "Loyalty()", "must be a msgspec Struct class"),
        ("fold", '"fold"', "must be a function (section, event) -> section"),
        ("retention", "100", "must be a text"),
        ("lookup_keys", "[]", "must be a function section -> keys"),
    ],
)
def test_a_bad_projection_field_names_the_module_and_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, value: str, reason: str
) -> None:
    module = projection_module(tmp_path, monkeypatch, **{field: value})
    error = load(module)
    message = str(error)
    assert message.startswith(f"profilestore.toml: projection module {module!r} (")
    assert f"Projection field `{field}` {reason}" in message
    assert f"{module}.py, line " in message
    assert error.path == "datasets.loyalty.projection"
    assert "\n" not in message


def test_any_error_at_import_names_the_module_its_line_and_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = projection_module(tmp_path, monkeypatch, fold="fold_typo")
    message = str(load(module))
    assert f"projection module {module!r} failed on import" in message
    assert "NameError: name 'fold_typo' is not defined" in message
    assert f"{module}.py, line " in message


def test_a_missing_projection_argument_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = projection_module(tmp_path, monkeypatch)
    path = tmp_path / f"{module}.py"
    path.write_text(path.read_text().replace("    fold=fold,\n", ""))
    message = str(load(module))
    assert f"projection module {module!r} failed on import" in message
    assert "TypeError" in message and "'fold'" in message


def test_a_syntax_error_names_the_module_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = projection_module(tmp_path, monkeypatch, retention='"unclosed')
    message = str(load(module))
    assert f"projection module {module!r} failed on import" in message
    assert "SyntaxError" in message and f"{module}.py, line " in message


def test_a_bad_projection_built_in_python_is_a_value_error_naming_the_field() -> None:
    from projections.carts import PROJECTION, fold

    with pytest.raises(InvalidProjection, match="`section` must be a msgspec Struct") as raised:
        type(PROJECTION)(
            dataset="carts",
            reads=PROJECTION.reads,
            section=dict,  # type: ignore[type-var]
            fold=fold,
            default_refresh="realtime",
            retention="",
        )
    assert isinstance(raised.value, ValueError)
    assert raised.value.field == "section"
