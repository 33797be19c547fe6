"""Tamper evidence: verify the log's hash chains, and digests over every stream head.

Every stored event carries a chain hash (see :func:`profilestore.eventlog.chain_hash`):
over the previous hash in its stream and its own stored bytes. A *digest* is a Merkle
root over each stream's head (stream id, version, hash) as of a log position, written
with that position, the number of streams and events, and a timestamp, and optionally
signed with an Ed25519 key that is kept away from the stores.

Verification recomputes every chain from the stored bytes, so it detects an edited byte,
a deleted event (a version gap) and swapped events by itself; with a digest it also
detects what a consistent rewrite of the chain would hide (a stream truncated or rewritten
after the digest): the recomputed root as of the digest's position no longer matches.
A signed digest whose fields were changed fails its signature check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Literal
from uuid import UUID

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from profilestore.errors import AuditFailed
from profilestore.eventlog import GENESIS, EventLog, chain_hash

DIGEST_FORMAT = "profilestore-audit-digest/1"
MAX_FINDINGS = 100

FindingKind = Literal["gap", "modified", "directory", "root_mismatch", "signature", "count"]


class Digest(msgspec.Struct, frozen=True, kw_only=True):
    format: str = DIGEST_FORMAT
    position: int
    """The log position (notification id) the digest covers."""
    streams: int
    events: int
    root: str
    """Hex SHA-256 Merkle root over the stream heads as of ``position``."""
    created_at: dt.datetime
    public_key: str | None = None
    """Hex Ed25519 public key of the signer, for information: verify with a key you trust."""
    signature: str | None = None

    def signed_bytes(self) -> bytes:
        unsigned = msgspec.structs.replace(self, signature=None)
        return msgspec.json.encode(unsigned, order="sorted")


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    kind: FindingKind
    detail: str
    stream: str | None = None
    version: int | None = None


class AuditReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    streams_checked: int
    events_checked: int
    position: int
    root: str
    digest_checked: bool
    signature_checked: bool
    findings: list[Finding]


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root over leaf hashes in the given order; an odd node is carried up unchanged."""
    if not leaves:
        return hashlib.sha256(b"profilestore:empty").digest()
    level = list(leaves)
    while len(level) > 1:
        paired = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _leaf(originator_id: UUID, version: int, head: bytes) -> bytes:
    return hashlib.sha256(
        b"\x00" + originator_id.bytes + version.to_bytes(8, "big") + head
    ).digest()


class _Scan:
    """One pass over every stream, recomputing chains; collects findings and heads."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.findings: list[Finding] = []
        self.streams = 0
        self.events = 0
        self.events_at_position = 0
        self.heads_at_position: list[tuple[UUID, int, bytes]] = []
        self.heads_now: dict[UUID, tuple[int, bytes]] = {}

    def add(self, finding: Finding) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(finding)

    def run(self, rows: Iterator[tuple[int, UUID, int, str, bytes, bytes | None]]) -> None:
        current: UUID | None = None
        expected = 1
        link = GENESIS
        at_position: tuple[int, bytes] | None = None
        for notification_id, originator_id, version, topic, state, stored_hash in rows:
            if originator_id != current:
                self._close(current, at_position, expected - 1, link)
                current, expected, link, at_position = originator_id, 1, GENESIS, None
                self.streams += 1
            if version != expected:
                self.add(
                    Finding(
                        kind="gap",
                        stream=str(originator_id),
                        version=expected,
                        detail=f"stream {originator_id} lacks version(s) "
                        f"{expected}..{version - 1}: events were deleted",
                    )
                )
            link = chain_hash(link, originator_id, version, topic, state)
            if stored_hash != link:
                self.add(
                    Finding(
                        kind="modified",
                        stream=str(originator_id),
                        version=version,
                        detail=f"stream {originator_id} version {version}: its bytes "
                        "or order differ from what was recorded",
                    )
                )
                if stored_hash is not None:
                    # Go on from the recorded hash, so each finding is an altered event,
                    # not every later one that inherits the break.
                    link = stored_hash
            expected = version + 1
            self.events += 1
            if notification_id <= self.position:
                at_position = (version, link)
                self.events_at_position += 1
        self._close(current, at_position, expected - 1, link)

    def _close(
        self, stream: UUID | None, at_position: tuple[int, bytes] | None, last: int, link: bytes
    ) -> None:
        if stream is None:
            return
        self.heads_now[stream] = (last, link)
        if at_position is not None:
            self.heads_at_position.append((stream, *at_position))

    def root(self) -> bytes:
        ordered = sorted(self.heads_at_position, key=lambda head: head[0].bytes)
        return merkle_root([_leaf(o, v, h) for o, v, h in ordered])


class Auditor:
    def __init__(self, log: EventLog, *, clock: Callable[[], dt.datetime]) -> None:
        self.log = log
        self.clock = clock

    def _scan(self, position: int, streams: Sequence[UUID] | None = None) -> _Scan:
        scan = _Scan(position)
        scan.run(self.log.scan_chain(streams))
        for originator_id, (version, head) in self.log.directory_heads(streams).items():
            recomputed = scan.heads_now.get(originator_id)
            if recomputed != (version, head):
                scan.add(
                    Finding(
                        kind="directory",
                        stream=str(originator_id),
                        detail=f"the stream directory's head of {originator_id} "
                        "does not match its events",
                    )
                )
        return scan

    def digest(self, private_key: Ed25519PrivateKey | None = None) -> Digest:
        """A digest of the log as it is now; refuses a log that fails verification."""
        position = self.log.head()
        scan = self._scan(position)
        if scan.findings:
            raise AuditFailed(self._report(scan, None, False, False))
        digest = Digest(
            position=position,
            streams=len(scan.heads_at_position),
            events=scan.events_at_position,
            root=scan.root().hex(),
            created_at=self.clock(),
        )
        if private_key is None:
            return digest
        public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        digest = msgspec.structs.replace(digest, public_key=public.hex())
        return msgspec.structs.replace(
            digest, signature=private_key.sign(digest.signed_bytes()).hex()
        )

    def verify(
        self, digest: Digest | None = None, public_key: Ed25519PublicKey | None = None
    ) -> AuditReport:
        """Recompute every chain; with a digest, compare the root as of its position."""
        scan = self._scan(digest.position if digest else self.log.head())
        signature_checked = False
        if digest is not None:
            if public_key is not None:
                signature_checked = True
                try:
                    public_key.verify(bytes.fromhex(digest.signature or ""), digest.signed_bytes())
                except (InvalidSignature, ValueError):
                    scan.add(
                        Finding(
                            kind="signature",
                            detail="the digest's signature does not "
                            "match its contents under the given public key",
                        )
                    )
            if scan.events_at_position != digest.events:
                scan.add(
                    Finding(
                        kind="count",
                        detail=f"the digest covers {digest.events} "
                        f"events up to position {digest.position}; the log now has "
                        f"{scan.events_at_position}",
                    )
                )
            if scan.root().hex() != digest.root:
                scan.add(
                    Finding(
                        kind="root_mismatch",
                        detail="the streams' heads as of "
                        f"position {digest.position} do not match the digest: "
                        "history was rewritten, truncated or removed",
                    )
                )
        return self._report(scan, digest, digest is not None, signature_checked)

    def verify_streams(self, streams: Sequence[UUID]) -> AuditReport:
        """:meth:`verify` for these streams only (no digest): their chains recomputed from
        the stored bytes and compared with their directory heads (what ``forget`` checks
        of the streams it made unreadable)."""
        return self._report(self._scan(self.log.head(), streams), None, False, False)

    @staticmethod
    def _report(
        scan: _Scan, digest: Digest | None, digest_checked: bool, signature_checked: bool
    ) -> AuditReport:
        return AuditReport(
            ok=not scan.findings,
            streams_checked=scan.streams,
            events_checked=scan.events,
            position=digest.position if digest else scan.position,
            root=scan.root().hex(),
            digest_checked=digest_checked,
            signature_checked=signature_checked,
            findings=scan.findings,
        )


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the signing key must be an Ed25519 private key (PEM)")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the verifying key must be an Ed25519 public key (PEM)")
    return key


def new_key_pair() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) of a new Ed25519 key."""
    private = Ed25519PrivateKey.generate()
    return (
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
