"""Settings: the shipped file, strict decoding, environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from profilestore.config import Settings, load_settings
from profilestore.errors import ConfigError
from profilestore.projection import Projection
from profilestore.store import load_projections, open_store

REPO_CONFIG = Path(__file__).parent.parent / "config" / "profilestore.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profilestore.toml"
    path.write_text(text)
    return path


def test_shipped_config_states_exactly_the_built_in_defaults(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert load_settings(REPO_CONFIG, environ={}) == Settings()
    assert load_settings(environ={"PROFILESTORE_CONFIG": str(REPO_CONFIG)}) == Settings()
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(missing, environ={})


def test_every_configured_dataset_loads_its_projection() -> None:
    projections = load_projections(load_settings(REPO_CONFIG, environ={}))
    assert set(projections) == {
        "identities",
        "attributes",
        "consents",
        "carts",
        "browsing",
        "email",
        "orders",
        "service",
        "social",
        "interests",
        "engagement",
        "scores",
    }


def test_unknown_key_names_the_file_and_the_field_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[projector]\npage_size = 10\npage_sise = 20\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert str(path) in str(raised.value)
    assert "page_sise" in str(raised.value)
    assert raised.value.path == "projector"


def test_bad_value_names_the_field_path_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, "[projector]\npage_size = 0\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert raised.value.path == "projector.page_size"
    assert ">= 1" in raised.value.reason


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ('{ projection = "projections.carts", every = "15 minutes" }', "`every`"),
        ('{ projection = "projections.carts", refresh = "sometimes" }', "`refresh`"),
        ('{ projection = "projections.carts", every = "5m", refresh = "realtime" }', "one of"),
        ('{ projection = "projections.carts", cron = "0 3 * *" }', "expected 5"),
    ],
)
def test_dataset_refresh_is_checked(tmp_path: Path, entry: str, reason: str) -> None:
    path = write(tmp_path, f"[datasets]\ncarts = {entry}\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert reason in str(raised.value)
    assert "datasets.carts" in str(raised.value)


def test_a_projection_module_that_does_not_exist_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, '[datasets]\ncarts = { projection = "projections.nope" }\n')
    with pytest.raises(ConfigError) as raised:
        load_projections(load_settings(path, environ={}), source=str(path))
    assert raised.value.path == "datasets.carts.projection"


def test_environment_overrides_any_setting_and_is_named_in_errors(tmp_path: Path) -> None:
    settings = load_settings(
        REPO_CONFIG,
        environ={
            "PROFILESTORE_HOME": str(tmp_path),
            "PROFILESTORE_DOCUMENTS__URL": "mongodb://db.example:27017/p",
            "PROFILESTORE_PROJECTOR__PAGE_SIZE": "250",
            "PROFILESTORE_DATASETS__BROWSING__EVERY": "15m",
        },
    )
    assert settings.home == tmp_path
    assert settings.documents.url == "mongodb://db.example:27017/p"
    assert settings.projector.page_size == 250
    assert settings.datasets["browsing"].cadence == "every 15m"
    assert settings.datasets["carts"].cadence == "realtime"
    assert settings.url(settings.event_log.url) == f"sqlite:///{tmp_path}/events.sqlite"
    with pytest.raises(ConfigError) as raised:
        load_settings(REPO_CONFIG, environ={"PROFILESTORE_PROJECTOR__PAGE_SIZE": "lots"})
    assert "PROFILESTORE_PROJECTOR__PAGE_SIZE" in str(raised.value)
    assert raised.value.path == "projector.page_size"


def test_only_double_underscore_names_home_and_config_are_settings(tmp_path: Path) -> None:
    settings = load_settings(
        REPO_CONFIG,
        environ={
            "PROFILESTORE_TEST_POSTGRES_URL": "postgresql://u:p@127.0.0.1:5432/db",
            "PROFILESTORE_SOMETHING": "anything",
            "PROFILESTORE_BENCH_SCALE": "large",
            "PROFILESTORE_PYTHON313": "/usr/bin/python3.13",
            "OTHER__THING": "x",
        },
        home=tmp_path,
    )
    assert settings == load_settings(REPO_CONFIG, environ={}, home=tmp_path)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("PROFILESTORE_DOCUMENTS__URLL", "documents"),
        ("PROFILESTORE_DOCUMENT__URL", ""),
        ("PROFILESTORE_DATASETS__CARTS__EVERYY", "datasets.carts"),
    ],
)
def test_a_misspelt_section_or_key_in_a_double_underscore_name_is_an_error(
    name: str, path: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(REPO_CONFIG, environ={name: "x"})
    assert name in str(raised.value)
    assert raised.value.path == path
    assert "unknown field" in raised.value.reason


def test_the_settings_module_names_no_test_or_benchmark_variable() -> None:
    import profilestore.config

    source = Path(profilestore.config.__file__).read_text()
    for word in ("TEST", "BENCH", "PYTHON313"):
        assert word not in source


def test_a_dataset_line_without_a_cadence_uses_the_module_default(tmp_path: Path) -> None:
    path = write(tmp_path, '[datasets]\nsocial = { projection = "projections.social" }\n')
    with open_store(load_settings(path, environ={}, home=tmp_path / "home")) as store:
        assert store.settings.datasets["social"].cadence is None
        assert store.cadence("social") == "cron 0 3 * * sun"
        assert list(store.projections) == ["social"]


def test_a_projection_with_a_malformed_default_refresh_is_refused() -> None:
    from projections.carts import PROJECTION

    with pytest.raises(ValueError, match="default_refresh"):
        Projection(
            dataset="carts",
            reads=PROJECTION.reads,
            section=PROJECTION.section,
            fold=PROJECTION.fold,
            default_refresh="hourly",
            retention="",
        )


def test_home_argument_wins_over_the_environment(tmp_path: Path) -> None:
    settings = load_settings(environ={"PROFILESTORE_HOME": "/elsewhere"}, home=tmp_path)
    assert settings.home == tmp_path


def test_invalid_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[projector\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})
