"""The error module: every error class lives in ``errors.py``, and messages say what failed,
which id or field, and what to do, without personal data or URL passwords."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import profilestore
from profilestore import errors
from profilestore.audit import AuditReport, Finding
from profilestore.errors import (
    AmbiguousIdentifier,
    AuditFailed,
    BatchTooLarge,
    IdentifierNotFound,
    LogUnavailable,
    NotFound,
    NotFoundHistory,
    ProfileStoreError,
)


def all_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(profilestore.__path__, f"{profilestore.__name__}.")
    ]


@pytest.mark.parametrize("module_name", all_modules())
def test_every_error_class_is_defined_in_the_errors_module(module_name: str) -> None:
    module = importlib.import_module(module_name)
    elsewhere = [
        name
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == module_name
        and module is not errors
    ]
    assert elsewhere == [], f"move {elsewhere} from {module_name} into profilestore.errors"


def test_every_error_of_the_module_derives_from_the_root() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert {cls for cls in classes if cls.__module__ == errors.__name__} <= {
        cls for cls in classes if issubclass(cls, ProfileStoreError)
    }


def test_a_batch_too_large_says_the_limit_and_what_to_do() -> None:
    message = str(BatchTooLarge(1200, 1000))
    assert "1200 events" in message
    assert "nothing was appended" in message
    assert "batches of at most 1000" in message


def test_a_missing_history_names_the_customer_and_is_a_not_found() -> None:
    error = NotFoundHistory("cust-42")
    assert isinstance(error, NotFound)
    assert "'cust-42'" in str(error)
    assert "check the customer id" in str(error)


def test_a_failed_audit_says_what_to_run_next() -> None:
    finding = Finding(kind="modified", stream="s-1", detail="stream s-1 version 3: altered")
    report = AuditReport(
        ok=False,
        streams_checked=1,
        events_checked=3,
        position=3,
        root="",
        digest_checked=False,
        signature_checked=False,
        findings=[finding],
    )
    message = str(AuditFailed(report))
    assert "1 finding(s); first: stream s-1 version 3: altered" in message
    assert "audit verify" in message


@pytest.mark.parametrize(
    "error",
    [
        IdentifierNotFound("email", "ann@example.com"),
        AmbiguousIdentifier("email", "ann@example.com", ["c-1", "c-2"]),
        LogUnavailable(
            "PostgreSQL",
            "append",
            ConnectionError("password=s3cret ann@example.com"),
        ),
    ],
    ids=lambda error: type(error).__name__,
)
def test_messages_hold_no_personal_data_or_password(error: ProfileStoreError) -> None:
    assert "ann@example.com" not in str(error)
    assert "s3cret" not in str(error)
    assert "c-1" not in str(error)  # nor who else holds an identifier
