"""Trigger modules and their config lines: a mistake is one error naming the file and field."""

from __future__ import annotations

import datetime as dt
import textwrap
import uuid
from pathlib import Path

import pytest

from profilestore.config import SHIPPED_TRIGGERS, load_settings
from profilestore.errors import ConfigError, InvalidTrigger
from profilestore.store import load_triggers
from profilestore.trigger import Fire, Trigger, Wait, check_decision, load_trigger

REPO = Path(__file__).parent.parent
VALID = {
    "name": '"nudge"',
    "reads": "(ConsentGiven,)",
    "channel": '"email"',
    "purpose": '"marketing"',
    "transactional": "False",
    "decide": "decide",
    "description": '"a nudge"',
    "settings": "Knobs",
}


def trigger_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **fields: str) -> str:
    """A trigger module with ``fields`` (Python source) replacing valid ones, on sys.path."""
    name = f"throwaway_{uuid.uuid4().hex[:8]}"
    arguments = "".join(f"    {key}={value},\n" for key, value in (VALID | fields).items())
    source = textwrap.dedent(
        """\
        import msgspec

        from profilestore.events import ConsentGiven
        from profilestore.trigger import Fire, Trigger


        class Knobs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
            after_days: int = 3


        def decide(event, profile, now, settings):
            return Fire(payload={}, dedupe_key="nudge")


        """
    )
    (tmp_path / f"{name}.py").write_text(f"{source}TRIGGER = Trigger(\n{arguments})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def config(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "profilestore.toml"
    path.write_text(f"[triggers]\n{line}\n")
    return path


def test_every_shipped_trigger_loads_and_none_is_enabled_by_default() -> None:
    settings = load_settings(REPO / "config" / "profilestore.toml", environ={})
    assert set(settings.triggers) == set(SHIPPED_TRIGGERS)
    assert load_triggers(settings) == {}
    on = {f"PROFILESTORE_TRIGGERS__{n.upper()}__ENABLED": "true" for n in SHIPPED_TRIGGERS}
    enabled = load_triggers(load_settings(REPO / "config" / "profilestore.toml", environ=on))
    assert list(enabled) == list(SHIPPED_TRIGGERS)
    for name, entry in enabled.items():
        assert entry.trigger.name == name
        assert entry.trigger.description


def test_a_valid_module_with_settings_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = trigger_module(tmp_path, monkeypatch)
    line = f'nudge = {{ trigger = "{module}", enabled = true, settings = {{ after_days = 7 }} }}'
    enabled = load_triggers(load_settings(config(tmp_path, line), environ={}))
    assert enabled["nudge"].settings.after_days == 7
    assert enabled["nudge"].trigger.topics == ("consent.given",)
    assert enabled["nudge"].since is None


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("name", '"Nudge Me"', "'Nudge Me' must match"),
        ("reads", "[ConsentGiven]", "must be a non-empty tuple of event classes"),
        ("reads", "()", "must be a non-empty tuple of event classes"),
        ("reads", "(str,)", "holds <class 'str'>, which is not an event class"),
        ("channel", '"pigeon"', "'pigeon' is not a channel"),
        ("purpose", '""', "must be a text of 1 to 512 characters"),
        ("transactional", '"no"', "must be True or False"),
        ("decide", '"decide"', "must be a function (event, profile, now, settings)"),
        ("needs", '"orders"', "must be a tuple of dataset names"),
        ("settings", "dict", "must be a msgspec Struct class"),
    ],
)
def test_a_bad_trigger_field_names_the_module_and_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, value: str, reason: str
) -> None:
    module = trigger_module(tmp_path, monkeypatch, **{field: value})
    with pytest.raises(ConfigError) as raised:
        load_trigger(module, source="profilestore.toml", path="triggers.nudge.trigger")
    message = str(raised.value)
    assert message.startswith(f"profilestore.toml: trigger module {module!r} (")
    assert f"Trigger field `{field}` {reason}" in message
    assert f"{module}.py, line " in message
    assert raised.value.path == "triggers.nudge.trigger"


def test_settings_without_defaults_are_refused() -> None:
    import msgspec

    class Required(msgspec.Struct, frozen=True, kw_only=True):
        days: int

    with pytest.raises(InvalidTrigger, match="`settings` every field needs a default"):
        Trigger(
            name="x",
            reads=(__import__("profilestore.events").events.OrderPlaced,),
            channel="email",
            purpose="marketing",
            transactional=False,
            decide=lambda *a: None,
            description="",
            settings=Required,
        )


@pytest.mark.parametrize(
    ("line", "path", "reason"),
    [
        ('{ trigger = "MODULE", enabled = true, settings = { after_dayz = 7 } }',
         "triggers.nudge.settings", "unknown field `after_dayz`"),
        ('{ trigger = "MODULE", enabled = true, settings = { after_days = "soon" } }',
         "triggers.nudge.settings.after_days", "Expected `int`"),
        ('{ trigger = "MODULE", enabeld = true }', "triggers.nudge", "unknown field `enabeld`"),
        ('{ trigger = "MODULE", since = 2026-03-01T00:00:00 }', "triggers.nudge.since",
         "timezone"),
        ('{ trigger = "no.such.module" }', "triggers.nudge.trigger", "cannot import"),
    ],
)  # fmt: skip
def test_a_bad_config_line_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, path: str, reason: str
) -> None:
    module = trigger_module(tmp_path, monkeypatch)
    with pytest.raises(ConfigError) as raised:
        load_triggers(
            load_settings(config(tmp_path, f"nudge = {line.replace('MODULE', module)}"), environ={})
        )
    assert raised.value.path == path
    assert reason in str(raised.value)
    assert str(tmp_path) in str(raised.value) or raised.value.source == "config"


def test_a_config_name_must_be_the_module_trigger_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = trigger_module(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="TRIGGER is named 'nudge', not 'poke'") as raised:
        load_triggers(
            load_settings(config(tmp_path, f'poke = {{ trigger = "{module}" }}'), environ={})
        )
    assert raised.value.path == "triggers.poke"


def test_a_dataset_the_trigger_needs_must_be_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = trigger_module(tmp_path, monkeypatch, needs='("loyalty",)')
    path = config(tmp_path, f'nudge = {{ trigger = "{module}", enabled = true }}')
    with pytest.raises(ConfigError, match="reads dataset 'loyalty', which is not configured"):
        load_triggers(load_settings(path, environ={}))


def test_a_contact_policy_mistake_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "profilestore.toml"
    path.write_text('[contact]\nquiet_hours = { start = "25:00" }\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert raised.value.path == "contact.quiet_hours.start"
    path.write_text('[contact]\ntimezone = "Moon/Base"\n')
    with pytest.raises(ConfigError, match="not an IANA time zone"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("decision", "reason"),
    [
        (Fire(payload={}, dedupe_key=""), "dedupe_key must be a text of 1 to 200"),
        (Fire(payload={}, dedupe_key="a\x1fb"), "unit separator"),
        (Wait(until=dt.datetime(2026, 1, 1), dedupe_key="k"), "with a time zone"),
        ("fire", "a decision is Fire, Wait or None, not str"),
    ],
)
def test_a_malformed_decision_is_refused(decision: object, reason: str) -> None:
    with pytest.raises(TypeError, match=reason):
        check_decision(decision)
