"""The customer-360 web UI in a real headless browser against `profilestore serve`.

Debian's chromium (`/usr/bin/chromium`, or `PROFILESTORE_CHROMIUM`) is driven with
Playwright's sync API; `scripts/bootstrap test` installs it with apt where it is missing
(browser downloads are not possible here). Without it the tests skip saying so (under CI
they fail). The store is filled in-process (one merged customer with identifiers of every
kind, 120 page views over 30 days, an order whose receipt trigger fired, a consent, a name
changed between two moments), then served by `profilestore serve --role api` on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import unavailable
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright
from test_serve import free_port

from profilestore import load_settings, open_store

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("PROFILESTORE_CHROMIUM", "/usr/bin/chromium"))
FULL_KEY = "web-full-key"  # read + audit
READ_KEY = "web-read-key"  # read only
INGEST_KEY = "web-ingest-key"  # no read
KEYS = [("support", FULL_KEY, '["read", "audit"]'), ("viewer", READ_KEY, '["read"]')]
KEYS += [("loader", INGEST_KEY, '["ingest"]')]
CUSTOMER = "ann-1"
FORGOTTEN = "gone-1"
ANONYMOUS = "ann-web"
VIEWS = 120
BASE_DAY = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def _env() -> dict[str, str]:
    entries = ", ".join(
        f'{{name="{name}", sha256="{hashlib.sha256(key.encode()).hexdigest()}", scopes={scopes}}}'
        for name, key, scopes in KEYS
    )
    return {
        "PROFILESTORE_API__KEYS": f"[{entries}]",
        "PROFILESTORE_TRIGGERS__RECEIPT__ENABLED": "true",
    }


def _event(event_type: str, event_id: str, customer: str, at: dt.datetime, **fields: Any) -> Any:
    return {
        "type": event_type,
        "event_id": event_id,
        "customer_id": customer,
        "occurred_at": at.isoformat(),
        **fields,
    }


def first_batch() -> list[dict[str, Any]]:
    at = BASE_DAY - dt.timedelta(days=30)
    seen = "identifier.seen"
    return [
        _event(seen, "w-email", CUSTOMER, at, kind="email", value="Ann.Lee@Example.com"),
        _event(seen, "w-phone", CUSTOMER, at, kind="phone", value="+1 (415) 555-0003"),
        _event(seen, "w-handle", CUSTOMER, at, kind="handle", network="Twitter", value="@AnnLee"),
        _event(seen, "w-device", CUSTOMER, at, kind="device", value="dev-ann-42"),
        _event("profile.name_set", "w-name-1", CUSTOMER, at, first_name="Ann", last_name="Lee"),
        _event("consent.given", "w-consent", CUSTOMER, at, channel="email", purpose="marketing"),
    ]


def second_batch() -> list[dict[str, Any]]:
    at = BASE_DAY - dt.timedelta(days=1)
    order = {
        "order_id": "A-1001",
        "items": [{"sku": "S1", "name": "socks", "quantity": 2, "unit_price": "4.50"}],
        "total": "9.00",
        "currency": "EUR",
    }
    events = [
        _event("profile.name_set", "w-name-2", CUSTOMER, at, first_name="Annabel"),
        _event("order.placed", "w-order", CUSTOMER, at, **order),
        # An anonymous key on the same device: linked into the known one (a merged profile).
        _event("identifier.seen", "w-anon", ANONYMOUS, at, kind="device", value="dev-ann-42"),
        _event(
            "browse.page_viewed",
            "w-xss",
            ANONYMOUS,
            at,
            url="https://shop.example/<b>",
            title="<script>document.title='pwned'</script>",
        ),
    ]
    for i in range(VIEWS):  # every 6 hours from March 1st: four a day for 30 days
        when = BASE_DAY + dt.timedelta(hours=6 * i)
        events.append(
            _event("browse.page_viewed", f"w-view-{i:03d}", CUSTOMER, when, url=f"/p/{i}")
        )
    return events


@dataclass
class Served:
    base: str
    as_of: str
    """A moment between the two batches (ISO, UTC)."""
    order: list[str]
    """Every event id of the merged profile, in the order the log recorded them."""
    log: list[str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("web") / "home"
    env = os.environ | _env()
    with open_store(load_settings(home=home, environ=env)) as store:
        store.run_triggers()  # the receipt's warm-up starts now: the order below is after it
        store.append(first_batch())
        time.sleep(0.05)
        as_of = dt.datetime.now(dt.UTC).isoformat()
        time.sleep(0.05)
        store.append(second_batch())
        store.append([_event("profile.name_set", "w-gone", FORGOTTEN, BASE_DAY, first_name="Zed")])
        store.refresh()
        store.run_triggers()
        store.forget(FORGOTTEN, request_id="DSR-web-1")
    order = [e["event_id"] for e in first_batch() + second_batch()]
    port = free_port()
    script = Path(sys.executable).parent / "profilestore"
    process = subprocess.Popen(
        [str(script), "--home", str(home), "serve", "--role", "api", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    log: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)
        yield Served(base=base, as_of=as_of, order=order, log=log)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        log.append(stderr)
    assert process.returncode == 0, stderr[-3000:]
    # Personal data and keys never reach the log: not the identifiers searched for below.
    for secret in ("ann.lee@example.com", "Ann.Lee", "14155550003", "annlee", FULL_KEY, READ_KEY):
        assert secret.lower() not in stderr.lower()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        unavailable(
            f"the web UI tests need chromium at {CHROMIUM}: `apt-get install -y chromium` "
            "(scripts/bootstrap test does it) or set PROFILESTORE_CHROMIUM"
        )
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
    yield launched
    launched.close()


@pytest.fixture
def context(browser: Browser, served: Served) -> Iterator[BrowserContext]:
    opened = browser.new_context(base_url=served.base, viewport={"width": 1400, "height": 1000})
    yield opened
    opened.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: errors.append(str(e)))
    yield opened
    # No script error and nothing the Content-Security-Policy had to block (htmx included);
    # answers with an error status are logged by chromium too, and are what tests ask for.
    assert [e for e in errors if not e.startswith("Failed to load resource")] == []


def log_in(page: Page, key: str = FULL_KEY, path: str = "/ui") -> None:
    page.goto(path)
    expect(page.locator("h1")).to_have_text("Log in")
    page.fill("#key", key)
    page.click("button[type=submit]")


def search(page: Page, kind: str, value: str) -> None:
    page.goto("/ui")
    page.select_option("#kind", kind)
    page.fill("#value", value)
    page.click("#search button[type=submit]")


def event_ids(page: Page) -> list[str]:
    return page.locator("tr.event").evaluate_all("rows => rows.map(r => r.dataset.eventId)")


# --- login and access --------------------------------------------------------------------------


def test_a_page_without_a_session_redirects_to_the_login_and_back(
    page: Page, context: BrowserContext, served: Served
) -> None:
    page.goto(f"/ui/profile?id={CUSTOMER}")
    assert re.search(r"/ui/login\?next=", page.url)
    page.fill("#key", FULL_KEY)
    page.click("button[type=submit]")
    expect(page.locator("#customer-id")).to_have_text(CUSTOMER)
    (cookie,) = [c for c in context.cookies() if c["name"] == "profilestore_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert FULL_KEY not in cookie["value"]


def test_partial_requests_without_a_session_get_401_and_pages_a_redirect(served: Served) -> None:
    with httpx.Client(base_url=served.base) as client:
        partial = client.get(
            "/ui/timeline", params={"id": CUSTOMER}, headers={"HX-Request": "true"}
        )
        assert partial.status_code == 401
        full = client.get("/ui/profile", params={"id": CUSTOMER})
        assert full.status_code == 303
        assert full.headers["location"].startswith("/ui/login?next=")
        # The API keys work on the API only: a key header opens no page.
        with_key = client.get(
            "/ui/profile", params={"id": CUSTOMER}, headers={"X-API-Key": FULL_KEY}
        )
        assert with_key.status_code == 303
    with httpx.Client(base_url=served.base, cookies={"profilestore_session": "a.b"}) as forged:
        assert forged.get("/ui/profile", params={"id": CUSTOMER}).status_code == 303


def test_a_key_without_the_read_scope_is_refused_at_login(page: Page) -> None:
    log_in(page, INGEST_KEY)
    expect(page.locator(".message")).to_contain_text("lacks the 'read' scope")
    assert "/ui/login" in page.url
    log_in(page, "not-a-key")
    expect(page.locator(".message")).to_have_text("Unknown API key.")
    page.goto("/ui")
    expect(page.locator("h1")).to_have_text("Log in")


def test_logging_out_ends_the_session(page: Page) -> None:
    log_in(page)
    expect(page.locator("h1")).to_have_text("Find a customer")
    page.click("#logout")
    expect(page.locator("h1")).to_have_text("Log in")
    page.goto("/ui")
    expect(page.locator("h1")).to_have_text("Log in")


def test_forms_need_their_token(context: BrowserContext, page: Page, served: Served) -> None:
    log_in(page)
    expect(page.locator("h1")).to_have_text("Find a customer")
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    with httpx.Client(base_url=served.base, cookies=cookies) as client:
        refused = client.post("/ui/find", data={"kind": "id", "value": CUSTOMER})
        assert refused.status_code == 403
        login = client.post("/ui/login", data={"key": FULL_KEY})  # no login cookie nor token
        assert login.status_code == 403


def test_a_read_only_key_sees_the_profile_but_not_the_events_nor_the_audit(page: Page) -> None:
    log_in(page, READ_KEY, f"/ui/profile?id={CUSTOMER}")
    expect(page.locator("#customer-id")).to_have_text(CUSTOMER)
    expect(page.locator("#timeline-needs-audit")).to_be_visible()
    assert page.locator("#audit-link").count() == 0
    answer = page.goto(f"/ui/audit?id={CUSTOMER}")
    assert answer is not None and answer.status == 403
    expect(page.locator("#error-message")).to_contain_text("lacks the 'audit' scope")


# --- finding a customer ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("id", CUSTOMER),
        ("id", ANONYMOUS),
        ("email", "  ANN.LEE@example.COM "),
        ("phone", "+1 415-555-0003"),
        ("handle", "twitter:@annlee"),
        ("device", "dev-ann-42"),
    ],
)
def test_search_by_each_kind_finds_the_profile(page: Page, kind: str, value: str) -> None:
    log_in(page)
    search(page, kind, value)
    expect(page.locator("#section-attributes")).to_contain_text("Annabel")
    keys = page.locator("#identity code.key").all_inner_texts()
    assert sorted(keys) == sorted([CUSTOMER, ANONYMOUS])


def test_search_kinds_come_from_the_one_declaration(page: Page) -> None:
    from profilestore.identifiers import KIND_NAMES

    log_in(page)
    options = page.locator("#kind option").evaluate_all("os => os.map(o => o.value)")
    assert options == ["id", *KIND_NAMES]


@pytest.mark.parametrize(
    ("kind", "value", "status", "message"),
    [
        ("id", "nobody", 404, "No customer has this customer id."),
        ("email", "nobody@example.com", 404, "No customer has this email."),
        ("phone", "not a number", 400, "Not a valid phone"),
    ],
)
def test_search_for_nobody_says_so(
    page: Page, kind: str, value: str, status: int, message: str
) -> None:
    log_in(page)
    with page.expect_response(lambda r: r.url.endswith("/ui/find")) as answer:
        search(page, kind, value)
    assert answer.value.status == status
    expect(page.locator("#search-message")).to_contain_text(message)


def test_a_forgotten_customer_is_a_410_page_saying_so(page: Page) -> None:
    log_in(page)
    answer = page.goto(f"/ui/profile?id={FORGOTTEN}")
    assert answer is not None and answer.status == 410
    expect(page.locator("#error-message")).to_contain_text("forgotten")
    with page.expect_response(lambda r: r.url.endswith("/ui/find")) as found:
        search(page, "id", FORGOTTEN)
    assert found.value.status == 410
    expect(page.locator("#error-message")).to_contain_text("forgotten")
    expect(page.locator("body")).not_to_contain_text("Zed")


def test_a_profile_that_does_not_exist_is_a_404_page(page: Page) -> None:
    log_in(page)
    answer = page.goto("/ui/profile?id=" + quote("no/such customer"))
    assert answer is not None and answer.status == 404
    expect(page.locator("#error-message")).to_contain_text("No customer has the id")


# --- the profile -------------------------------------------------------------------------------


def test_the_profile_shows_every_section_identity_consent_and_triggers(page: Page) -> None:
    log_in(page, path=f"/ui/profile?id={CUSTOMER}")
    for dataset in ("identities", "attributes", "consents", "orders", "browsing"):
        section = page.locator(f"#section-{dataset}")
        expect(section).to_be_visible()
        expect(section.locator(".freshness")).to_contain_text("folded to log position")
    expect(page.locator("#section-orders")).to_contain_text("A-1001")
    expect(page.locator("#identity")).to_contain_text("evidence")
    graph = re.compile(r"identity graph at log position \d+, \d+ events behind")
    expect(page.locator("#identity-graph")).to_have_text(graph)
    expect(page.locator("#identity tr.link-active")).to_contain_text("device:dev-ann-42")
    email = page.locator("#consent tr", has_text="email").first
    expect(email).to_contain_text("allowed")
    expect(page.locator("#triggers")).to_contain_text("receipt")
    expect(page.locator("#erasure-scores")).to_contain_text("Erasure")
    # Escaped, not run: a page title that is a script tag shows as text.
    expect(page.locator("#events")).to_contain_text("<script>document.title='pwned'</script>")
    assert page.title() != "pwned"


def test_the_profile_as_of_a_moment_is_the_profile_then(page: Page, served: Served) -> None:
    log_in(page, path=f"/ui/profile?id={CUSTOMER}")
    page.fill("#as_of", served.as_of)
    page.click(".as-of button")
    expect(page.locator("#as-of-banner")).to_be_visible()
    attributes = page.locator("#section-attributes")
    expect(attributes).to_contain_text("Ann")
    expect(attributes).not_to_contain_text("Annabel")
    assert page.locator("#section-orders").count() == 0  # no order yet then
    page.click("text=Back to now")
    expect(page.locator("#section-attributes")).to_contain_text("Annabel")
    before = "2000-01-01T00:00:00Z"
    answer = page.goto(f"/ui/profile?id={CUSTOMER}&as_of={quote(before)}")
    assert answer is not None and answer.status == 404


def test_a_malformed_as_of_is_refused_naming_the_field(page: Page) -> None:
    log_in(page)
    answer = page.goto(f"/ui/profile?id={CUSTOMER}&as_of=yesterday")
    assert answer is not None and answer.status == 400
    expect(page.locator("#error-message")).to_contain_text("`as_of`")


# --- the timeline ------------------------------------------------------------------------------


def test_the_timeline_pages_through_every_event_in_log_order(page: Page, served: Served) -> None:
    log_in(page, path=f"/ui/profile?id={CUSTOMER}")
    seen = event_ids(page)
    assert len(seen) == 50
    shown = seen
    while page.locator("#next-page").count():
        page.click("#next-page")  # an htmx swap of the timeline alone
        expect(page.locator("tr.event").first).not_to_have_attribute("data-event-id", shown[0])
        shown = event_ids(page)
        seen += shown
        assert "/ui/profile?" in page.url and "after=" in page.url  # the page's own URL
    # Every event, in the order appended, then the link the identity rules appended.
    assert seen[:-1] == served.order
    assert seen[-1].startswith("link-")
    page.click("#first-page")
    expect(page.locator("tr.event").first).to_have_attribute("data-event-id", served.order[0])


def test_the_timeline_filters_by_type_and_by_day(page: Page, served: Served) -> None:
    log_in(page, path=f"/ui/profile?id={CUSTOMER}")
    page.select_option("#type", "order.placed")
    page.click("#filter")
    expect(page.locator("tr.event")).to_have_count(1)
    assert event_ids(page) == ["w-order"]
    page.select_option("#type", "browse.page_viewed")
    page.fill("#since", "2026-03-10")
    page.fill("#until", "2026-03-11")
    page.click("#filter")
    expect(page.locator("tr.event")).to_have_count(8)  # four a day
    occurred = page.locator("tr.event").evaluate_all("rows => rows.map(r => r.dataset.occurred)")
    assert all(o.startswith(("2026-03-10", "2026-03-11")) for o in occurred)
    assert event_ids(page) == [f"w-view-{i:03d}" for i in range(36, 44)]
    page.fill("#since", "2027-01-01")
    page.fill("#until", "")
    page.click("#filter")
    expect(page.locator("#no-events")).to_have_text("No events match these filters.")
    # Filtered paging: 121 page views, 50 a page.
    page.select_option("#type", "browse.page_viewed")
    page.fill("#since", "")
    page.click("#filter")
    expect(page.locator("tr.event")).to_have_count(50)
    page.click("#next-page")
    expect(page.locator("tr.event").first).to_have_attribute("data-event-id", "w-view-049")
    assert "type=browse.page_viewed" in page.url


def test_the_audit_page_verifies_the_customer(page: Page) -> None:
    log_in(page, path=f"/ui/profile?id={CUSTOMER}")
    page.click("#audit-link")
    expect(page.locator("#verify-result")).to_contain_text("No drift")
