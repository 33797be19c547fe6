"""The production setup in ``deploy/``, checked as far as this machine can (no Docker, no
mongod here): the compose file parses, every profilestore command and option it runs
exists, every ``PROFILESTORE_`` variable it sets is a setting, and the MongoDB init runs
the shard plan the store's layout states."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from profilestore.cli import main
from profilestore.config import load_settings
from profilestore.mongo_layout import mongosh_script

DEPLOY = Path(__file__).parent.parent / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def profilestore_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image") == "profilestore:latest"
    }


def resolve(args: list[str]) -> click.Command:
    """The command ``args`` (after ``profilestore``) runs, its options parsed as click
    would, without running it: an unknown command or option, or a bad value, raises."""
    context = click.Context(main, info_name="profilestore")
    command: click.Command = main
    rest = list(args)
    while isinstance(command, click.Group):
        assert rest, "a group without a command"
        sub = command.get_command(context, rest[0])
        if sub is None:
            raise click.UsageError(f"no command {rest[0]!r}")
        context = click.Context(sub, info_name=rest[0], parent=context)
        command, rest = sub, rest[1:]
    command.make_context(str(command.name), rest, parent=context.parent)
    return command


def test_the_compose_file_has_the_whole_production_setup(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    commands = {name: " ".join(s.get("command", [])) for name, s in services.items()}
    assert sum("--configsvr --replSet cfg" in c for c in commands.values()) == 3
    for shard in ("shard1", "shard2"):
        members = [c for c in commands.values() if f"--shardsvr --replSet {shard} " in c]
        assert len(members) == 3, shard
    assert commands["mongos"].startswith("mongos --configdb cfg/")
    roles = {
        name: service["command"][service["command"].index("--role") + 1]
        for name, service in profilestore_services(compose).items()
    }
    assert roles == {"api": "api", "worker": "worker"}
    assert services["api"]["deploy"]["replicas"] >= 2
    assert services["worker"]["deploy"]["replicas"] >= 1


def test_every_profilestore_command_in_the_compose_file_exists(compose: dict[str, Any]) -> None:
    services = profilestore_services(compose)
    assert services
    for name, service in services.items():
        command = service["command"]
        assert command[0] == "profilestore", name
        assert resolve(command[1:]).name == "serve", name
        for test in [service.get("healthcheck", {}).get("test", [])]:
            for url in re.findall(r"http://[^']+", " ".join(test)):
                assert url.endswith(("/health/ready", "/health/live")), url
    with pytest.raises(click.UsageError):
        resolve(["serve", "--role", "nobody"])  # the check can fail
    with pytest.raises(click.UsageError):
        resolve(["serve", "--replicas", "2"])


def test_the_dockerfile_default_command_exists() -> None:
    line = next(
        line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("CMD")
    )
    args = yaml.safe_load(line.removeprefix("CMD").strip())
    assert args[0] == "profilestore"
    assert resolve(args[1:]).name == "serve"


def test_every_setting_the_compose_file_sets_is_a_setting(compose: dict[str, Any]) -> None:
    for name, service in profilestore_services(compose).items():
        environment = {
            key: re.sub(r"\$\{[^}]+\}", "x", str(value))
            for key, value in service["environment"].items()
        }
        settings_env = {
            k: v for k, v in environment.items() if k.startswith("PROFILESTORE_") and "__" in k
        }
        assert settings_env, name
        settings = load_settings(environ=settings_env)  # strict: an unknown key raises
        assert settings.documents.url == "mongodb://mongos:27017/profilestore"
        assert settings.event_log.url.startswith("postgresql://profilestore:")
        assert environment["PROFILESTORE_CONFIG"] == "/etc/profilestore/profilestore.toml"


def test_the_mongo_init_shards_the_collections_per_the_plan(compose: dict[str, Any]) -> None:
    init = compose["services"]["mongo-init"]
    script = (DEPLOY / "mongo" / "init-cluster.sh").read_text()
    assert init["command"] == ["bash", "/deploy/mongo/init-cluster.sh"]
    assert "./mongo:/deploy/mongo:ro" in init["volumes"]
    assert "/deploy/mongo/shard-collections.js" in script
    plan = (DEPLOY / "mongo" / "shard-collections.js").read_text()
    assert plan == mongosh_script("profilestore", "profiles", ["scores"])  # the derived one
    # The database and collection it shards are the ones the processes are told to use.
    environment = profilestore_services(compose)["api"]["environment"]
    assert environment["PROFILESTORE_DOCUMENTS__URL"].endswith("/profilestore")
    assert environment["PROFILESTORE_DOCUMENTS__COLLECTION"] == "profiles"
    # Replica set members named in the script are services of the compose file.
    for host in set(re.findall(r"\b(cfg\d|shard\d[abc]|mongos):\d+", script)):
        assert host in compose["services"], host


def test_the_balancer_forwards_to_the_api_service(compose: dict[str, Any]) -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    port = shlex.split(" ".join(compose["services"]["api"]["command"]))
    assert "http://api:" + port[port.index("--port") + 1] in conf
