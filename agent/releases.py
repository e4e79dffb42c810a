"""From a desired state on the wire to an update the device may act on.

A desired message names a signed target (``models/{name}/{version}``) and its sequence; that is
all MQTT says. The release itself (files, hashes, I/O contract, golden reference, tolerances)
is the target's signed custom data in the control plane's TUF repository, read here through
:class:`~edgeloop.agent.trust.TrustedTargets`. So a forged or replayed desired message can at
most ask for something the release keys signed, and a sequence below the committed one is
refused by the update flow (gate ``rollback``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import AgentConfig
from .errors import GateError
from .protocol import MAX_MESSAGE_BYTES, Desired, Gate, ModelManifest
from .states import Update

log = logging.getLogger("edgeloop.agent.releases")

RELEASE_KEY = "edgeloop"
"""The key of a target's custom data that holds the :class:`SignedRelease`."""

METADATA_PATH = "/tuf/"
"""Where the control plane serves the repository's metadata, under its URL."""


class SignedRelease(BaseModel):
    """What the release keys vouch for beyond the artifact's length and hashes.

    In the signed custom data the manifest is a JSON string: TUF signs canonical JSON, which
    has no floating-point numbers, and a manifest has tolerances and thresholds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sequence: int = Field(ge=1, description="rises with every release; never installed lower")
    manifest: ModelManifest

    @field_validator("manifest", mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, str | bytes):
            if len(value) > MAX_MESSAGE_BYTES:
                raise ValueError(f"a manifest of {len(value)} bytes is over {MAX_MESSAGE_BYTES}")
            return json.loads(value)
        return value


def release_custom(sequence: int, manifest: ModelManifest) -> dict[str, Any]:
    """A target's custom data for ``manifest`` at ``sequence`` (the server signs this)."""
    return {RELEASE_KEY: {"sequence": sequence, "manifest": manifest.model_dump_json()}}


def device_session(config: AgentConfig) -> requests.Session:
    """The HTTP session for metadata and downloads, carrying the device's API token."""
    session = requests.Session()
    token = config.identity.token()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


class Releases:
    """Resolves desired states against the repository whose root this device pinned."""

    def __init__(self, config: AgentConfig, session: requests.Session) -> None:
        self.config = config
        self.session = session

    def trusted(self) -> bool:
        from .trust import PINNED_ROOT

        return self.config.server is not None and (self.config.trust_dir / PINNED_ROOT).is_file()

    def resolve(self, desired: Desired) -> Update:
        """The update ``desired`` names, as the signed metadata describes it.

        Raises:
            GateError: on ``signature`` (not signed, not listed, or the custom data does not
                agree with the signed hashes), ``rollback``, ``expired`` or ``metadata``.
        """
        if desired.target is None:
            return Update(
                device_id=desired.device_id,
                revision=desired.revision,
                model=None,
                profile=desired.profile,
            )
        if not self.trusted():
            raise GateError(
                Gate.SIGNATURE,
                "this agent has no pinned root metadata or no server URL, so it installs "
                "nothing: enrol it (edgeloop-agent enrol --server URL --token TOKEN)",
            )
        from .trust import TrustedTargets

        assert self.config.server is not None
        path = desired.target.path
        # A TrustError is a GateError naming the trust gate: it goes up as it is.
        signed = TrustedTargets(
            self.config.trust_dir,
            self.config.server.rstrip("/") + METADATA_PATH,
            session=self.session,
        ).resolve(path)
        try:
            release = SignedRelease.model_validate(signed.custom.get(RELEASE_KEY))
        except ValueError as exc:  # a ValidationError, or the manifest text is not JSON
            problems = exc.error_count() if isinstance(exc, ValidationError) else 1
            raise GateError(
                Gate.SIGNATURE,
                f"signed target {path} carries no valid release data ({problems} problems); "
                "republish it with edgeloop models push",
            ) from None
        artifact = release.manifest.artifact
        if (artifact.sha256, artifact.size) != (signed.sha256, signed.length):
            raise GateError(
                Gate.SIGNATURE,
                f"signed target {path}: its manifest names {artifact.sha256[:12]} "
                f"({artifact.size} B) but the signed hashes are of {signed.sha256[:12]} "
                f"({signed.length} B)",
            )
        if desired.target.sequence > release.sequence:
            raise GateError(
                Gate.SIGNATURE,
                f"the desired state names sequence {desired.target.sequence} of {path}, but "
                f"the signed release is sequence {release.sequence}: nothing signed matches",
            )
        if desired.target.sequence < release.sequence:
            log.info(
                "%s: desired names sequence %d, the signed release is %d; taking the signed",
                path,
                desired.target.sequence,
                release.sequence,
            )
        return Update(
            device_id=desired.device_id,
            revision=desired.revision,
            model=release.manifest,
            profile=desired.profile,
            target=path,
            sequence=release.sequence,
        )
