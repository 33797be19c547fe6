"""Normalisation and blocking of identifiers, and the process-wide policy that drives them."""

from __future__ import annotations

import re
import unicodedata

import pytest

from profilestore.config import IdentitySettings, load_settings
from profilestore.errors import ConfigError
from profilestore.normalise import (
    PLACEHOLDERS,
    IdentifierPolicy,
    configure,
    current_policy,
    is_blocked,
    normalise_identifier,
    policy_from_settings,
)

US_NUMBER = "phone:+14155550003"


@pytest.mark.parametrize(
    "written",
    ["+1 (415) 555-0003", "14155550003", "(415) 555-0003", "1-415-555-0003", "+14155550003"],
)
def test_every_form_of_a_us_number_is_one_e164_key_in_region_us(written: str) -> None:
    assert current_policy().default_region == "US"
    assert normalise_identifier("phone", written) == US_NUMBER


def test_a_national_number_is_read_in_the_configured_region() -> None:
    configure(IdentifierPolicy(default_region="GB"))
    assert normalise_identifier("phone", "020 7946 0018") == "phone:+442079460018"
    assert normalise_identifier("phone", "07700 900123") == "phone:+447700900123"
    # A number with its country code means the same in every region.
    assert normalise_identifier("phone", "+1 (415) 555-0003") == US_NUMBER


def test_a_number_with_its_country_code_is_read_as_such_in_another_region() -> None:
    assert normalise_identifier("phone", "+44 20 7946 0018") == "phone:+442079460018"
    with pytest.raises(ValueError, match="not a phone number"):
        normalise_identifier("phone", "020 7946 0018")  # a UK national number, read in US


@pytest.mark.parametrize(
    "written",
    ["call-me-12", "123", "555-0100", "+999 1234 5678", "+1 415 555 00031234", "-1", "0"],
)
def test_a_phone_that_is_not_a_possible_number_is_refused_without_quoting_it(
    written: str,
) -> None:
    with pytest.raises(ValueError) as raised:
        normalise_identifier("phone", written)
    assert str(raised.value) == (  # the same whatever was written: it never quotes it
        "`value` is not a phone number: give it with its country code (+14155550003) "
        "or as dialled in the default region (US)"
    )


@pytest.mark.parametrize(
    ("written", "key"),
    [
        (" Ann.Lee@Example.COM ", "email:ann.lee@example.com"),
        ("a@b.co", "email:a@b.co"),
        ("e@x.co", "email:e@x.co"),
        ("ann+tag@example.com", "email:ann+tag@example.com"),
        ("o'brien@example.ie", "email:o'brien@example.ie"),
        ("Ünïcode@Exämple.com", "email:ünïcode@exämple.com"),
        ("用户@例子.广告", "email:用户@例子.广告"),
    ],
)
def test_emails_are_trimmed_and_lower_cased_and_internationalised_ones_pass(
    written: str, key: str
) -> None:
    assert normalise_identifier("email", written) == key


def test_an_email_is_one_key_whichever_unicode_form_it_came_in() -> None:
    composed = "zoë@example.com"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert normalise_identifier("email", decomposed) == normalise_identifier("email", composed)


@pytest.mark.parametrize(
    "written",
    ["ann-at-example.com", "ann@example", "ann@@example.com", "a b@example.com", "ann@.com"],
)
def test_an_email_that_is_not_an_address_is_refused_without_quoting_it(written: str) -> None:
    with pytest.raises(ValueError, match=r"^`value` is not an email address") as raised:
        normalise_identifier("email", written)
    assert written.split("@", maxsplit=1)[0] not in str(raised.value)


@pytest.mark.parametrize("placeholder", sorted(PLACEHOLDERS))
def test_placeholders_identify_nobody_in_any_case(placeholder: str) -> None:
    for written in (placeholder, placeholder.upper(), f" {placeholder.title()} "):
        assert is_blocked("device", normalise_identifier("device", written))
        assert is_blocked("handle", normalise_identifier("handle", written, "twitter"))


@pytest.mark.parametrize(
    "device_id",
    ["00000000-0000-0000-0000-000000000000", "0000000000000000", "00:00:00:00:00:00", "0"],
)
def test_an_all_zero_device_id_identifies_nobody(device_id: str) -> None:
    assert is_blocked("device", normalise_identifier("device", device_id))


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("device", "device:dev-42"),
        ("device", "device:00000000-0000-0000-0000-000000000001"),
        ("device", "device:nullable"),
        ("handle", "handle:null:ann"),  # a network named like a placeholder is no handle
        ("email", "email:null@example.com"),
        ("phone", US_NUMBER),
    ],
)
def test_real_identifiers_are_not_blocked(kind: str, key: str) -> None:
    assert not is_blocked(kind, key)


def test_an_empty_value_identifies_nobody() -> None:
    assert is_blocked("device", "device:")
    assert is_blocked("handle", "handle:twitter:")


def test_configured_values_block_case_insensitively() -> None:
    configure(IdentifierPolicy(blocked_values=frozenset({" Guest ", "NoReply@Example.com"})))
    assert is_blocked("device", "device:GUEST")
    assert is_blocked("handle", "handle:twitter:guest")
    assert is_blocked("email", normalise_identifier("email", "noreply@example.com"))
    assert not is_blocked("device", "device:guest-1")


def test_configured_patterns_match_the_whole_normalised_value() -> None:
    configure(
        IdentifierPolicy(
            blocked_patterns=(re.compile(r"test-\d+"), re.compile(r"\+1555\d{7}")),
        )
    )
    assert is_blocked("device", "device:test-123")
    assert not is_blocked("device", "device:my-test-123")  # fullmatch, not search
    assert is_blocked("phone", normalise_identifier("phone", "(555) 010-2030"))
    assert not is_blocked("phone", US_NUMBER)


def test_a_key_of_another_kind_is_a_mistake_that_does_not_quote_the_key() -> None:
    with pytest.raises(ValueError, match="starts with 'device:'") as raised:
        is_blocked("device", "email:ann@example.com")
    assert "ann" not in str(raised.value)


def test_the_default_policy_is_the_default_settings_one() -> None:
    assert policy_from_settings(IdentitySettings()) == IdentifierPolicy()


def test_a_policy_made_from_settings_is_the_one_configured() -> None:
    identity = IdentitySettings(
        default_region="GB", blocked_values=["Guest"], blocked_patterns=[r"test-\d+"]
    )
    policy = policy_from_settings(identity)
    assert policy.default_region == "GB"
    assert policy.blocked_values == frozenset({"guest"})
    assert [p.pattern for p in policy.blocked_patterns] == [r"test-\d+"]
    configure(policy)
    assert current_policy() is policy
    assert normalise_identifier("phone", "020 7946 0018") == "phone:+442079460018"
    assert is_blocked("device", "device:test-7")


def test_a_policy_refuses_a_region_phonenumbers_does_not_know() -> None:
    with pytest.raises(ValueError, match="`default_region` 'XX' is not a region"):
        IdentifierPolicy(default_region="XX")


@pytest.mark.parametrize("region", ["XX", "gb", "United Kingdom", ""])
def test_the_settings_refuse_an_unknown_region_naming_the_field(region: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"PROFILESTORE_IDENTITY__DEFAULT_REGION": f'"{region}"'})
    assert raised.value.path == "identity"
    assert raised.value.reason.startswith("`default_region`")


def test_the_settings_refuse_a_pattern_that_does_not_compile_naming_its_index() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"PROFILESTORE_IDENTITY__BLOCKED_PATTERNS": '["guest", "(oops"]'})
    assert raised.value.path == "identity"
    assert raised.value.reason.startswith("`blocked_patterns[1]` is not a regular expression")
