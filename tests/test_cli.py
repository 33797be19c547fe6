"""The command line: ingest, refresh, rebuild, lookups, exit codes, JSON on stdout."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner

from profilestore.cli import main
from profilestore.config import load_settings
from profilestore.events import CartItemAdded
from profilestore.mapper import lenient_type
from profilestore.store import open_store


def line(event_id: str, customer_id: str, **fields: object) -> str:
    base = {"event_id": event_id, "customer_id": customer_id, "occurred_at": "2026-02-01T09:00:00Z"}
    return json.dumps(base | fields)


EVENTS = [
    line("e1", "ann", type="identifier.seen", kind="email", value="Ann@Example.com"),
    line("e2", "ann", type="identifier.seen", kind="phone", value="+44 20 7946 0018"),
    line(
        "e3",
        "ann",
        type="cart.item_added",
        cart_id="k1",
        sku="S1",
        unit_price="5.00",
        currency="GBP",
    ),
    "",
    line("e4", "bob", type="browse.page_viewed", url="https://shop.example/"),
]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def run(home: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    runner = CliRunner()
    result = runner.invoke(main, ["--home", str(home), *args], input=input, catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def test_ingest_refresh_then_profile_and_find(home: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(EVENTS) + "\n")
    ingested = run(home, "ingest", str(events))
    assert ingested.returncode == 0, ingested.stderr
    assert "appended 4, duplicates 0, rejected 0" in ingested.stderr
    again = run(home, "ingest", "-", input=events.read_text())
    assert "appended 0, duplicates 4, rejected 0" in again.stderr

    refreshed = run(home, "refresh")
    assert json.loads(refreshed.stdout)["events_read"] == 4

    profile = json.loads(run(home, "profile", "ann", "--datasets", "carts,identities").stdout)
    assert set(profile["sections"]) == {"carts", "identities"}
    assert profile["sections"]["carts"]["open"][0]["value"] == "5.00"

    by_email = run(home, "find", "--email", "ANN@example.com", "--compact")
    assert json.loads(by_email.stdout)["customer_id"] == "ann"
    by_phone = run(home, "find", "--phone", "+442079460018")
    assert json.loads(by_phone.stdout)["customer_id"] == "ann"
    placeholder = run(home, "find", "--device", "null")  # blocked: not found, not an error
    assert placeholder.returncode == 1
    assert "no profile has this device" in placeholder.stderr

    history = run(home, "history", "ann").stdout.splitlines()
    assert [json.loads(h)["event_id"] for h in history] == ["e1", "e2", "e3"]


def test_a_bad_line_rejects_its_batch_and_reports_line_field_and_reason(
    home: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    bad = line(
        "bad",
        "ann",
        type="cart.item_added",
        cart_id="k1",
        sku="S1",
        unit_price="5.00",
        currency="GBP",
        quantity=0,
    )
    events.write_text("\n".join([*EVENTS, bad, EVENTS[0].replace("e1", "e9")]) + "\n")
    result = run(home, "ingest", "--batch-size", "3", str(events))
    assert result.returncode == 1
    # Batches of three non-blank lines: 1-3 are appended; 5-7 (with the bad line 6) are not.
    assert "line 6 is invalid at `$.quantity`: Expected `int` >= 1" in result.stderr
    assert "appended 3, duplicates 0, rejected 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_ingest_rejects_a_batch_with_a_nul_in_an_id_and_goes_on(home: Path) -> None:
    lines = [
        json.dumps(
            {
                "type": "cart.cleared",
                "event_id": f"c-{n}",
                "customer_id": "ann\u0000" if n == 2 else "ann",
                "occurred_at": "2026-03-01T10:00:00Z",
                "cart_id": "k1",
            }
        )
        for n in range(1, 5)
    ]
    result = run(home, "ingest", "--batch-size", "2", "-", input="\n".join(lines))
    assert result.returncode == 1
    assert "line 2 is invalid at `$.customer_id`" in result.stderr
    assert "appended 2, duplicates 0, rejected 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_customer_and_identifier_exit_1_without_a_traceback(home: Path) -> None:
    for args in (
        ["profile", "nobody"],
        ["find", "--email", "nobody@example.com"],
        ["history", "nobody"],
    ):
        result = run(home, *args)
        assert result.returncode == 1
        assert "not found" in result.stderr
        assert result.stdout == ""


def test_an_ambiguous_identifier_exits_1_without_naming_its_holders(home: Path) -> None:
    shared = [
        json.dumps(
            {
                "type": "identifier.seen",
                "event_id": f"s-{who}",
                "customer_id": f"holder-{who}",
                "occurred_at": "2026-03-01T10:00:00Z",
                "kind": "email",
                "value": "family@example.com",
            }
        )
        for who in ("one", "two", "three", "four", "five", "six")  # shared: links nobody
    ]
    assert run(home, "ingest", "-", input="\n".join(shared)).returncode == 0
    assert run(home, "refresh").returncode == 0
    result = run(home, "find", "--email", "family@example.com")
    assert result.returncode == 1
    assert "ambiguous" in result.stderr and "customer id" in result.stderr
    assert "holder-" not in result.stderr


def test_usage_errors_exit_2(home: Path) -> None:
    assert run(home, "find").returncode == 2
    assert run(home, "find", "--email", "a@b.co", "--phone", "123456").returncode == 2
    unknown = run(home, "refresh", "nosuchdataset")
    assert unknown.returncode == 2
    assert "unknown dataset 'nosuchdataset'" in unknown.stderr


def test_rebuild_and_datasets_listing(home: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(EVENTS) + "\n")
    run(home, "ingest", str(events))
    rebuilt = run(home, "rebuild", "identities")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt identities from 2 events" in rebuilt.stderr
    listing = {d["dataset"]: d for d in json.loads(run(home, "datasets").stdout)}
    assert listing["identities"]["position"] == 4
    assert listing["carts"]["refresh"] == "realtime"
    assert listing["social"]["refresh"] == "cron 0 3 * * sun"


def test_config_errors_name_the_file_and_exit_2(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[projector]\npage_size = -1\n")
    outcome = CliRunner().invoke(
        main, ["--config", str(config), "--home", str(home), "profile", "ann"]
    )
    assert outcome.exit_code == 2
    assert str(config) in outcome.stderr
    assert "projector.page_size" in outcome.stderr


def test_an_invalid_projection_module_is_one_line_naming_module_and_field_exit_2(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cli_bad_projection.py").write_text(
        "from projections.carts import PROJECTION as CARTS\n"
        "from profilestore.projection import Projection\n"
        "PROJECTION = Projection(dataset='loyalty', reads=list(CARTS.reads), section=CARTS.section,"
        " fold=CARTS.fold, default_refresh='realtime', retention='')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "profilestore.toml"
    config.write_text('[datasets]\nloyalty = { projection = "cli_bad_projection" }\n')
    outcome = CliRunner().invoke(
        main, ["--config", str(config), "--home", str(home), "profile", "ann"]
    )
    assert outcome.exit_code == 2, outcome.output
    assert "projection module 'cli_bad_projection'" in outcome.stderr
    assert "`reads` must be a tuple" in outcome.stderr
    assert "datasets.loyalty.projection" in outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) == 1


def test_demo_runs_end_to_end_as_a_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "profilestore"
    result = subprocess.run(
        [str(script), "--home", str(tmp_path / "demo"), "demo", "--customers", "60"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    figures = output["figures"]
    assert figures["customers"] == 60
    assert figures["events_appended"] == figures["refresh_events_read"] > 1000
    assert output["sample_profile"]["customer_id"].startswith("cust-")
    assert figures["scored_profiles"] == 60
    scores = output["sample_profile"]["sections"]["scores"]
    assert scores["lifecycle"]["stage"] in {"Discover", "Explore", "Engage", "Buy"}
    assert scores["fit_version"].startswith("fit-")
    assert "lookup_id_p50_us" in result.stderr


def test_status_shows_lag_before_a_refresh_and_none_after(home: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(EVENTS) + "\n")
    run(home, "ingest", str(events))
    before = {r["dataset"]: r for r in json.loads(run(home, "status", "--json").stdout)}
    assert before["carts"]["lag"]["events_behind"] > 0
    assert before["carts"]["last_run"] is None
    assert before["social"]["cadence"] == "cron 0 3 * * sun"
    run(home, "refresh")
    after = {r["dataset"]: r for r in json.loads(run(home, "status", "--json").stdout)}
    assert after["carts"]["lag"] == after["carts"]["lag"] | {
        "events_behind": 0,
        "seconds_behind": 0.0,
    }
    assert after["carts"]["last_run"]["status"] == "succeeded"
    assert after["orders"]["next_run"] is not None
    table = run(home, "status")
    assert table.returncode == 0 and "carts" in table.stdout and "realtime" in table.stdout
    assert (
        "identity graph: at position" in table.stdout and "0 log positions behind" in table.stdout
    )


def test_schedule_list_shows_sunday_0300_in_the_configured_zone(home: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["--home", str(home), "schedule", "list", "--count", "3"],
        env={"PROFILESTORE_SCHEDULE__TIMEZONE": "Europe/Paris"},
    )
    assert result.exit_code == 0, result.stderr
    rows = {r["dataset"]: r for r in json.loads(result.stdout)}
    assert rows["carts"]["next_runs"] == []
    assert rows["social"]["timezone"] == "Europe/Paris"
    social = rows["social"]["next_runs"]
    assert len(social) == 3
    # Never ran: due now (catch-up), then Sundays 03:00 Paris time.
    from datetime import datetime
    from zoneinfo import ZoneInfo

    later = [datetime.fromisoformat(t).astimezone(ZoneInfo("Europe/Paris")) for t in social[1:]]
    assert [t.strftime("%a %H:%M") for t in later] == ["Sun 03:00", "Sun 03:00"]


def test_retry_dead_letters_with_nothing_parked_releases_nothing(home: Path) -> None:
    result = run(home, "refresh", "carts", "--retry-dead-letters")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"carts": {"released": 0, "still_failing": 0}}


def test_worker_follows_real_time_datasets_and_stops_on_sigterm(home: Path, tmp_path: Path) -> None:
    import signal
    import time

    script = Path(sys.executable).parent / "profilestore"
    worker = subprocess.Popen(
        [str(script), "--home", str(home), "worker", "carts", "identities", "orders"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert worker.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(worker.stderr or ()), daemon=True)
    reader.start()
    try:
        events = tmp_path / "events.jsonl"
        events.write_text("\n".join(EVENTS) + "\n")
        assert run(home, "ingest", str(events)).returncode == 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = run(home, "find", "--email", "ann@example.com", "--compact")
            if found.returncode == 0 and "carts" in json.loads(found.stdout)["sections"]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the worker did not apply the real-time datasets")
        # SIGTERM once the worker says it runs (its handler is installed by then): before
        # that, on a loaded machine, the signal's default action would end it as -15.
        while time.monotonic() < deadline and not any("real time" in x for x in lines):
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        reader.join(timeout=10)
        for pipe in (worker.stdout, worker.stderr):
            if pipe is not None:
                pipe.close()
    err = "".join(lines)
    assert worker.returncode == 0, err
    assert "real time carts, identities; scheduled orders" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("setting", "url"),
    [
        ("event_log.url", "ftp://host/log"),
        ("event_log.url", "postgresql://u:secret@127.0.0.1:notaport/db"),
        ("documents.url", "redis://u:secret@host/0"),
        ("documents.url", "sqlite://"),
    ],
)
def test_a_bad_store_url_is_one_line_exit_2_and_creates_nothing(
    tmp_path: Path, setting: str, url: str
) -> None:
    home = tmp_path / "home"
    section, key = setting.split(".")
    env = {f"PROFILESTORE_{section.upper()}__{key.upper()}": url}
    outcome = CliRunner().invoke(main, ["--home", str(home), "profile", "ann"], env=env)
    assert outcome.exit_code == 2, outcome.output
    assert setting in outcome.stderr
    assert "Traceback" not in outcome.stderr and "secret" not in outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) == 1
    assert not home.exists(), "nothing may be created before the settings are checked"


def test_an_event_stored_before_the_bounds_is_reported_in_one_line_everywhere(
    home: Path,
) -> None:
    # What an older profilestore accepted: an amount whose line value overflows.
    with open_store(load_settings(home=home)) as store:
        at = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
        store._log.append(
            [
                lenient_type(CartItemAdded)(
                    event_id="b1",
                    customer_id="bob",
                    occurred_at=at,
                    recorded_at=at,
                    cart_id="k9",
                    sku="S",
                    quantity=2,
                    unit_price=Decimal("9E+999999"),
                    currency="EUR",
                )
            ]
        )
    assert run(home, "ingest", "-", input="\n".join(EVENTS)).returncode == 0
    assert run(home, "refresh").returncode == 0  # bob's cart event is dead-lettered
    rebuilt = run(home, "rebuild", "carts")
    assert rebuilt.returncode == 0
    assert "dead-lettered 1 event(s) of carts" in rebuilt.stderr
    as_of = run(home, "profile", "bob", "--as-of", "2100-01-01T00:00:00")
    assert as_of.returncode == 1
    assert "Traceback" not in as_of.stderr
    (message,) = as_of.stderr.strip().splitlines()
    for part in ("'bob'", "'carts'", "'b1'", "cart.item_added", "decimal.Overflow"):
        assert part in message
    verified = run(home, "verify")
    assert verified.returncode == 1
    assert "Traceback" not in verified.stderr
    assert "cannot fold carts: customer bob, event b1" in verified.stderr
    assert json.loads(verified.stdout)["failures"][0]["event_id"] == "b1"
    # Everyone else is served; the same amount sent today is refused.
    assert run(home, "profile", "ann").returncode == 0
    again = line(
        "b2",
        "bob",
        type="cart.item_added",
        cart_id="k9",
        sku="S",
        currency="EUR",
        unit_price="9E+999999",
    )
    refused = run(home, "ingest", "-", input=again)
    assert refused.returncode == 1
    assert "$.unit_price" in refused.stderr


def test_identity_merge_unmerge_and_explain(home: Path) -> None:
    lines = [
        json.dumps(
            {
                "type": "profile.name_set",
                "event_id": f"n-{who}",
                "customer_id": who,
                "occurred_at": "2026-03-01T10:00:00Z",
                "first_name": who.upper(),
            }
        )
        for who in ("crm-1", "shop-1")
    ]
    assert run(home, "ingest", "-", input="\n".join(lines)).returncode == 0
    assert run(home, "refresh").returncode == 0
    needs_reason = run(home, "identity", "merge", "crm-1", "shop-1")
    assert needs_reason.returncode == 2
    merged = run(home, "identity", "merge", "crm-1", "shop-1", "--reason", "same login")
    assert merged.returncode == 0, merged.stderr
    profile_id = json.loads(merged.stdout)["profile_id"]
    assert profile_id.startswith("~")
    profile = json.loads(run(home, "profile", "shop-1").stdout)
    assert (profile["customer_id"], profile["canonical_id"]) == ("shop-1", profile_id)
    explained = json.loads(run(home, "identity", "explain", "crm-1").stdout)
    assert sorted(explained["keys"]) == ["crm-1", "shop-1"]
    assert explained["links"][0]["reason"] == "same login"
    assert explained["links"][0]["actor"].startswith("cli")
    split = run(home, "identity", "unmerge", "shop-1", "--reason", "two people")
    assert split.returncode == 0 and json.loads(split.stdout)["profile_id"] == "shop-1"
    nothing = run(home, "identity", "unmerge", "shop-1", "crm-1", "--reason", "again")
    assert nothing.returncode == 0 and json.loads(nothing.stdout)["appended"] == 0
    unknown = run(home, "identity", "merge", "crm-1", "nobody", "--reason", "x")
    assert unknown.returncode == 2 and "`other` no event names this customer key" in unknown.stderr


def test_consent_exits_0_when_allowed_and_1_when_not(home: Path) -> None:
    given = {
        "type": "consent.given",
        "event_id": "c-1",
        "customer_id": "ann",
        "occurred_at": "2026-03-01T10:00:00Z",
        "channel": "email",
    }
    assert run(home, "ingest", "-", input=json.dumps(given)).returncode == 0
    assert run(home, "refresh").returncode == 0
    allowed = run(home, "consent", "ann", "--channel", "email")
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["decided_by"] == "c-1"
    denied = run(home, "consent", "ann", "--channel", "push")
    assert denied.returncode == 1 and json.loads(denied.stdout)["allowed"] is False
    assert run(home, "consent", "ann", "--channel", "fax").returncode == 2


def test_forget_prints_the_receipt_and_audit_erasures_lists_it(home: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(EVENTS) + "\n")
    assert run(home, "ingest", str(events)).returncode == 0
    assert run(home, "refresh").returncode == 0
    status = json.loads(run(home, "keys", "status").stdout)
    assert status["encrypted"] and status["live"] == 2 and status["destroyed"] == 0
    forgotten = run(home, "forget", "ann", "--request-id", "DSR-9")
    assert forgotten.returncode == 0, forgotten.stderr
    receipt = json.loads(forgotten.stdout)
    assert receipt["request_id"] == "DSR-9" and receipt["plaintext"]["found"] == 0
    assert "ann@example.com" not in forgotten.stdout.lower()
    listed = run(home, "audit", "erasures")
    assert [json.loads(x)["request_id"] for x in listed.stdout.splitlines()] == ["DSR-9"]
    gone = run(home, "profile", "ann")
    assert gone.returncode == 1 and "forgotten" in gone.stderr
    assert json.loads(run(home, "keys", "status").stdout)["destroyed"] == 1
    assert run(home, "audit", "verify").returncode == 0
