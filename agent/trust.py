"""What the device trusts: files named by The Update Framework's signed metadata.

Enrolment pins the repository's root (:func:`pin_root`). From then on the device believes a
file is an update only when python-tuf's client (``tuf.ngclient.Updater``) finds it listed
in targets metadata reached along root -> timestamp -> snapshot -> targets: each signed by
the keys the role before it names, none expired, none older than what the device has seen
before, and each of the version the role before it pins. :class:`TrustedTargets` runs that
walk against the control plane (``GET /tuf/{name}``) and returns what targets says about
one path as a :class:`SignedTarget`; the update flow downloads the file its own way and
checks it with :meth:`SignedTarget.verify_file`.

``metadata_dir`` holds::

    pinned_root.json        the root enrolment pinned: where every walk starts
    root.json, root_history/N.root.json, timestamp.json, snapshot.json, targets.json
                            python-tuf's cache: the newest metadata the device trusts, and
                            with it the versions an attacker may not roll back below

Invariants:
- :meth:`TrustedTargets.resolve` raises :class:`TrustError`, whose ``gate`` says which
  check refused (the table in :func:`_trust_error`), or :class:`StorageError` when the
  device cannot write its cache; nothing else.
- Every metadata request carries the given headers (the device's API token), and is bounded
  in size (:data:`MAX_LENGTHS`: ngclient stops reading past them) and in time
  (:data:`TIMEOUT_S` between bytes, :data:`DEADLINE_S` in all).
- python-tuf is imported on first use: an idle agent does not load it (see
  :func:`_fetcher_type`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import GateError, StorageError
from .protocol import SHA256_PATTERN, Gate
from .states import write_atomic

if TYPE_CHECKING:
    from tuf.ngclient import FetcherInterface, Updater

__all__ = [
    "DEADLINE_S",
    "MAX_LENGTHS",
    "PINNED_ROOT",
    "TIMEOUT_S",
    "SignedTarget",
    "TrustError",
    "TrustedTargets",
    "pin_root",
]

log = logging.getLogger("edgeloop.agent.trust")

MAX_LENGTHS = {
    "root": 512 * 1024,
    "timestamp": 16 * 1024,
    "snapshot": 2 * 1024 * 1024,
    "targets": 8 * 1024 * 1024,
}
"""The most bytes read of each role's metadata (ngclient's ``UpdaterConfig``); a server that
sends more is cut off there (an endless-data attack). Ours are far smaller: a timestamp is
about 500 bytes, a targets entry about 300."""
TIMEOUT_S = (5.0, 30.0)
"""Connect and read timeouts of each metadata request (the same as for artifacts)."""
DEADLINE_S = 60.0
"""The most one metadata file may take in all: a server that trickles bytes just inside the
read timeout is cut off here (a slow-retrieval attack)."""
CHUNK_BYTES = 16 * 1024
PINNED_ROOT = "pinned_root.json"
"""The file :func:`pin_root` writes in ``metadata_dir``: a device is enrolled when it exists
(python-tuf's own ``root.json`` appears only after the first refresh)."""
_CACHE = ("root.json", "timestamp.json", "snapshot.json", "targets.json")


class TrustError(GateError):
    """The signed metadata does not vouch for an update; ``gate`` names the check that
    refused (``signature``, ``rollback``, ``expired``, ``metadata``, or ``verify`` for a file
    that differs from what targets lists) and the message what to look at."""


class SignedTarget(BaseModel):
    """What the signed targets metadata says about one file.

    ``custom`` is the repository's own data for the file, parsed from signed JSON; it is
    typed ``Any`` inside because pydantic's ``JsonValue`` schema costs the agent tens of
    milliseconds at import for a check the JSON parser already made.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    length: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)
    custom: dict[str, Any] = Field(default_factory=dict)

    def verify_file(self, file: Path) -> None:
        """Check that ``file`` holds exactly the bytes targets lists for :attr:`path`.

        Raises:
            TrustError: gate ``verify``: the file is missing, or its length or SHA-256
                differ from the signed ones.
        """
        from tuf.api.exceptions import LengthOrHashMismatchError
        from tuf.api.metadata import TargetFile

        listed = TargetFile(self.length, {"sha256": self.sha256}, self.path)
        try:
            with file.open("rb") as handle:
                listed.verify_length_and_hashes(handle)
        except OSError as exc:
            raise TrustError(
                Gate.VERIFY, f"cannot read {file} to check it against {self.path}: {exc}"
            ) from exc
        except LengthOrHashMismatchError as exc:
            raise TrustError(
                Gate.VERIFY,
                f"{file} is not the {self.path} the signed targets metadata lists ({exc}); "
                "delete it and download it again",
            ) from exc


def pin_root(metadata_dir: Path, root_json: bytes) -> None:
    """Make ``root_json`` the root this device trusts (enrolment).

    It must be root metadata signed by its own root keys (a threshold of them). Pinning a
    root the device does not already hold clears the metadata cached under the previous
    one: a new trust anchor starts a new history.

    Raises:
        TrustError: gate ``metadata``: ``root_json`` is oversized or not root metadata;
            gate ``signature``: it is not signed by a threshold of its own root keys.
        StorageError: ``metadata_dir`` cannot be written.
    """
    from tuf.api.exceptions import RepositoryError, UnsignedMetadataError
    from tuf.api.metadata import Metadata, Root

    if len(root_json) > MAX_LENGTHS["root"]:
        raise TrustError(
            Gate.METADATA,
            f"the root to pin is {len(root_json)} bytes, over {MAX_LENGTHS['root']}; it is "
            "not this fleet's root.json",
        )
    try:
        root = Metadata[Root].from_bytes(root_json)
        if root.signed.type != Root.type:
            raise TrustError(
                Gate.METADATA, f"the root to pin is {root.signed.type} metadata, not root"
            )
        root.signed.verify_delegate(Root.type, root.signed_bytes, root.signatures)
    except UnsignedMetadataError as exc:
        raise TrustError(
            Gate.SIGNATURE,
            f"the root to pin is not signed by its own root keys ({exc}); fetch root.json "
            "from the control plane again",
        ) from exc
    except RepositoryError as exc:
        raise TrustError(
            Gate.METADATA, f"the root to pin is not TUF root metadata ({exc})"
        ) from exc
    pinned = metadata_dir / PINNED_ROOT
    try:
        metadata_dir.mkdir(parents=True, exist_ok=True)
        if _read_or_none(pinned) == root_json:
            return
        history = metadata_dir / "root_history" / f"{root.signed.version}.root.json"
        if _read_or_none(history) != root_json:
            _clear_cache(metadata_dir)
        write_atomic(pinned, root_json)
    except OSError as exc:
        raise StorageError(
            f"cannot write the trusted root into {metadata_dir} ({exc.strerror or exc}); "
            "free space on the device or fix the directory's permissions, then enrol again"
        ) from exc
    log.info("pinned TUF root v%d in %s", root.signed.version, metadata_dir)


class TrustedTargets:
    """The device's view of the control plane's TUF repository.

    One instance per ``metadata_dir``: python-tuf's cache is not safe for two clients at
    once, so :meth:`resolve` calls are serialised.

    Args:
        metadata_dir: where :func:`pin_root` wrote the root; python-tuf caches beside it.
        metadata_url: the base URL of the metadata, e.g. ``https://cp.example/tuf/``.
        session: the HTTP session to use (connection reuse, TLS settings).
        headers: sent with every metadata request, e.g. the device's
            ``Authorization: Bearer ...``.
    """

    def __init__(
        self,
        metadata_dir: Path,
        metadata_url: str,
        *,
        session: requests.Session | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.metadata_dir = metadata_dir
        self.metadata_url = metadata_url if metadata_url.endswith("/") else f"{metadata_url}/"
        self._session = session or requests.Session()
        self._headers = dict(headers or {})
        self._lock = threading.Lock()

    def resolve(self, path: str) -> SignedTarget:
        """Refresh the metadata from the server and return what targets lists for ``path``.

        Raises:
            TrustError: the metadata cannot be trusted, or does not list ``path``; ``gate``
                says why (see :func:`_trust_error`).
            StorageError: the device cannot write its metadata cache.
        """
        from tuf.api.exceptions import DownloadError, RepositoryError

        with self._lock:
            fetcher = _fetcher_type()(self._session, self._headers)
            try:
                updater = self._updater(fetcher)
                updater.refresh()
                listed = updater.get_targetinfo(path)
            except (RepositoryError, DownloadError) as exc:
                raise _trust_error(exc, fetcher.last_url) from exc
            except OSError as exc:
                raise StorageError(
                    f"cannot write TUF metadata into {self.metadata_dir} "
                    f"({exc.strerror or exc}); free space on the device"
                ) from exc
            finally:
                fetcher.close()
        if listed is None:
            raise TrustError(
                Gate.SIGNATURE,
                f"{path} is not listed in the signed targets metadata: "
                "the server offered an update its TUF repository does not name. Check that "
                "the model was published into the repository (add_target)",
            )
        try:
            return SignedTarget(
                path=listed.path,
                length=listed.length,
                sha256=listed.hashes.get("sha256", ""),
                custom=listed.custom if listed.custom is not None else {},
            )
        except ValidationError as exc:
            raise TrustError(
                Gate.METADATA,
                f"the signed targets metadata lists {path} without a SHA-256, or with custom "
                f"data that is not an object ({exc.errors()[0]['msg']}); republish it",
            ) from exc

    def _updater(self, fetcher: FetcherInterface) -> Updater:
        from tuf.ngclient import Updater, UpdaterConfig

        try:
            pinned = (self.metadata_dir / PINNED_ROOT).read_bytes()
        except FileNotFoundError:
            raise TrustError(
                Gate.METADATA,
                f"no trusted root in {self.metadata_dir}: the device was never enrolled "
                "with this server's TUF root (pin_root); enrol it again",
            ) from None
        config = UpdaterConfig(
            root_max_length=MAX_LENGTHS["root"],
            timestamp_max_length=MAX_LENGTHS["timestamp"],
            snapshot_max_length=MAX_LENGTHS["snapshot"],
            targets_max_length=MAX_LENGTHS["targets"],
        )
        # Every walk starts from the pinned root, as python-tuf advises; the roots the device
        # learned since are in root_history and verified again on the way.
        return Updater(
            metadata_dir=str(self.metadata_dir),
            metadata_base_url=self.metadata_url,
            fetcher=fetcher,
            config=config,
            bootstrap=pinned,
        )


def _trust_error(exc: Exception, url: str | None) -> TrustError:
    """Which gate refused, by python-tuf's exception; the first row that matches wins, so
    subclasses come before their bases (``EqualVersionNumberError`` is a
    ``BadVersionNumberError``; every ``Download*Error`` a ``DownloadError``; every other
    row's exception a ``RepositoryError``, as is a ``DeserializationError``)."""
    from tuf.api import exceptions as tuf

    table: tuple[tuple[type[Exception], Gate, str], ...] = (
        (
            tuf.DownloadLengthMismatchError,
            Gate.METADATA,
            "{url} is larger than this device reads of such a file ({detail}); it stopped "
            "reading there. Check the server's metadata directory",
        ),
        (
            tuf.DownloadHTTPError,
            Gate.METADATA,
            "the server answered {url} with {detail}; on 401 or 403 check the device's API "
            "token, on 404 that the server has a TUF repository",
        ),
        (
            tuf.SlowRetrievalError,
            Gate.METADATA,
            "{url} came too slowly ({detail}); check the network and the server's load",
        ),
        (
            tuf.DownloadError,
            Gate.METADATA,
            "cannot fetch {url} ({detail}); check that the control plane is reachable",
        ),
        (
            tuf.ExpiredMetadataError,
            Gate.EXPIRED,
            "{detail} (the device's clock says {now}): if the clock is right, the server "
            "stopped re-signing its metadata (is its refresh running?), root needs a new "
            "version from the offline key (resign_root), or someone replays frozen metadata",
        ),
        (
            tuf.BadVersionNumberError,
            Gate.ROLLBACK,
            "{detail} (from {url}): the server sent metadata of another version than the "
            "signed metadata pins, or older than this device has seen: a replay, files of "
            "two publishes mixed, or a server restored from an old backup",
        ),
        (
            tuf.UnsignedMetadataError,
            Gate.SIGNATURE,
            "{detail} (from {url}): the metadata is not signed by the keys this device's "
            "trusted root names. Check that the server's TUF repository is the one the "
            "device was enrolled with (re-enrol if it was re-created) and that nobody "
            "edited its files; otherwise someone is tampering with updates on the way",
        ),
        (
            tuf.LengthOrHashMismatchError,
            Gate.SIGNATURE,
            "{detail} (from {url}): the file is not the one the signed metadata names",
        ),
        (
            tuf.RepositoryError,
            Gate.METADATA,
            "{detail} (from {url}): the server's TUF metadata is malformed or incomplete; "
            "check its metadata directory",
        ),
    )
    detail = str(exc) or type(exc).__name__
    for kind, gate, message in table:
        if isinstance(exc, kind):
            return TrustError(
                gate,
                message.format(
                    url=url or "the metadata", detail=detail, now=datetime.now(UTC).isoformat()
                ),
            )
    return TrustError(Gate.METADATA, f"{type(exc).__name__}: {detail} (from {url})")


@functools.cache
def _fetcher_type() -> type[_SessionFetcher]:
    """The fetcher class, made on first use: it subclasses python-tuf's
    ``FetcherInterface``, and defining it at import would load tuf into every agent."""
    from tuf.api.exceptions import DownloadError, DownloadHTTPError, SlowRetrievalError
    from tuf.ngclient import FetcherInterface

    class SessionFetcher(FetcherInterface):
        """ngclient's downloads over our requests session, with our headers and limits.

        ngclient's ``download_file`` counts the bytes and stops past the maximum length; this
        only has to stream, bound the time, and raise ``Download*Error`` for every failure.
        """

        def __init__(self, session: requests.Session, headers: dict[str, str]) -> None:
            self.session = session
            self.headers = headers
            self.last_url: str | None = None
            self._response: requests.Response | None = None

        def _fetch(self, url: str) -> Iterator[bytes]:
            self.close()
            self.last_url = url
            deadline = time.monotonic() + DEADLINE_S
            try:
                response = self.session.get(
                    url,
                    headers=self.headers,
                    stream=True,
                    timeout=TIMEOUT_S,
                    allow_redirects=False,
                )
            except requests.Timeout as exc:
                raise SlowRetrievalError(f"no answer within {TIMEOUT_S[0]:.0f} s") from exc
            if response.status_code != 200:
                response.close()
                raise DownloadHTTPError(
                    f"HTTP {response.status_code} {response.reason}", response.status_code
                )
            self._response = response
            return self._chunks(response, deadline)

        def close(self) -> None:
            """Drop the connection of an unfinished download. ngclient abandons the
            iterator when a file runs over its maximum length, and the exception it raises
            keeps the iterator alive: without this the server would go on sending."""
            if self._response is not None:
                self._response.close()
                self._response = None

        @staticmethod
        def _chunks(response: requests.Response, deadline: float) -> Iterator[bytes]:
            try:
                for chunk in response.iter_content(CHUNK_BYTES):
                    if time.monotonic() > deadline:
                        raise SlowRetrievalError(f"not complete after {DEADLINE_S:.0f} s")
                    yield chunk
            except requests.Timeout as exc:
                raise SlowRetrievalError(f"no data for {TIMEOUT_S[1]:.0f} s") from exc
            except requests.RequestException as exc:
                raise DownloadError(f"the transfer broke off: {exc}") from exc
            finally:
                response.close()

    return cast("type[_SessionFetcher]", SessionFetcher)


if TYPE_CHECKING:

    class _SessionFetcher(FetcherInterface):
        last_url: str | None

        def close(self) -> None: ...

        def __init__(self, session: requests.Session, headers: dict[str, str]) -> None: ...


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _clear_cache(metadata_dir: Path) -> None:
    for name in _CACHE:
        (metadata_dir / name).unlink(missing_ok=True)
    history = metadata_dir / "root_history"
    if history.is_dir():
        for old in history.glob("*.root.json"):
            old.unlink()
