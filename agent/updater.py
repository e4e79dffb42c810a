"""The update flow's steps: what each state of :mod:`edgeloop.agent.states` does.

Each step is a method named for its state that returns an :class:`Event` (or None when the
agent is stopping mid-step: the state stays persisted and is resumed on the next start).
:meth:`Updater._transition` persists the next record *before* the next step runs, and
settles the resting states (which model serves, which report goes out) idempotently, so
running a settle twice after a crash changes nothing.

What serves is announced to in-process applications (:mod:`edgeloop.agent.local`) in
``serving.json`` on every change, probation included; their calls on the candidate count as
live traffic in probation, next to the local endpoint's requests.

Nothing a model or the device's disk does ends the agent: validation runs in a child process
(:mod:`edgeloop.agent.sandbox`), a full disk ends a download on the ``disk`` gate, and a state
file that cannot be written leaves the committed model serving while the step is retried with
capped backoff. Budgets are the device's own, tightened by the desired state, never relaxed
(:func:`~edgeloop.agent.validate.effective_profile`); a model that failed here before is
refused at once (:func:`~edgeloop.agent.states.failed_before`).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests

from .config import AgentConfig
from .errors import AgentError, ArtifactError, GateError, StorageError, TransportError
from .fetch import fetch, held_bytes, progress_line
from .golden import load_golden
from .host import LoadedModel, ModelHost
from .local import (
    ProbationNotice,
    ServedModel,
    Serving,
    announce,
    await_reports,
    merged_window,
    probation_traffic,
)
from .protocol import Desired, DeviceProfile, FileRef, Gate, ModelManifest, Phase, Report
from .runtime import open_session, release_free_memory
from .sandbox import ValidationRequest, validate_in_child
from .slots import SlotContents, Slots, sha256_file
from .states import (
    TERMINAL,
    Event,
    FailedModel,
    Slot,
    SlotModel,
    StateStore,
    Update,
    UpdateRecord,
    failed_before,
    next_state,
    remember_failure,
    resume,
    worth_remembering,
)
from .validate import (
    BUDGET_GATES,
    budget_of,
    budget_verdicts,
    check_budgets,
    check_size,
    effective_profile,
)

log = logging.getLogger("edgeloop.agent.updater")

T = TypeVar("T")

KILL_AT_ENV = "EDGELOOP_AGENT_KILL_AT"
"""Fault injection for the crash suite: SIGKILL this process right after persisting the named
state (set only on the process under test; its restart runs without it)."""

DISK_MARGIN_BYTES = 16 * 2**20
"""Free space kept beyond the download itself: the state file, logs and the outbox need room."""

STORAGE_RETRY_S = (1.0, 60.0)
"""First and longest wait between attempts while the state file cannot be written."""

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)

UNKNOWN_SHA256 = "0" * 64
"""The artifact hash a report names when trust refused the update before any hash was known."""

UNVERIFIED_GATES = frozenset(
    {
        Gate.SIGNATURE,
        Gate.ROLLBACK,
        Gate.EXPIRED,
        Gate.METADATA,
        Gate.SIZE,
        Gate.DISK,
        Gate.DOWNLOAD,
        Gate.VERIFY,
    }
)
"""Refusals that came before the files were on the device and matched their signed hashes."""

Resolver = Callable[[Desired], Update]
"""Turns a desired state from the wire into a trusted :class:`Update` (see
:mod:`edgeloop.agent.releases`); raises :class:`GateError` naming the trust gate."""


def _untrusted(desired: Desired) -> Update:
    raise GateError(
        Gate.SIGNATURE,
        "this agent has no trusted root metadata, so it installs nothing: enrol it "
        "(edgeloop-agent enrol) or give it the repository's root.json",
    )


@dataclass
class Hooks:
    """How the updater tells the rest of the agent what happened (MQTT lives elsewhere)."""

    on_state: Callable[[UpdateRecord], None] = lambda record: None
    on_report: Callable[[Report], None] = lambda report: None


class Updater:
    def __init__(
        self,
        config: AgentConfig,
        host: ModelHost,
        hooks: Hooks | None = None,
        resolve: Resolver = _untrusted,
        http: requests.Session | None = None,
    ) -> None:
        """``resolve`` checks a desired state against the signed metadata; without one the
        agent refuses every desired state that names a model. ``http`` carries the device's
        credentials to the artifact server."""
        self.config = config
        self.resolve = resolve
        self.host = host
        self.hooks = hooks or Hooks()
        workdir = config.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.blobs = workdir / "blobs"
        self.store = StateStore(workdir / "state.json")
        self.slots = Slots(workdir)
        self.record = self.store.load()
        self._persisted = self.record
        self._recovered = False
        self._wanted: Desired | Update | None = None
        self.stopping = threading.Event()
        self.rollback_requested = threading.Event()
        self._http = http or requests.Session()
        self._lock = threading.RLock()
        self._served: SlotModel | None = None  # the slot of what the host serves
        self._probation: ProbationNotice | None = None
        self._announced: Serving | None = None

    # ------------------------------------------------------------------ entry points

    def start(self) -> None:
        """Recover from whatever the last run left on disk; serve the model that is safe.

        Resting states are settled again (idempotent); an interrupted update is resumed where
        it stopped, or abandoned if it kept killing the agent. When the state file cannot be
        written (a full or failing disk), the committed model serves and :meth:`run` retries:
        an agent that crashed here would restart into the same wall, forever, and serve
        nothing meanwhile.
        """
        self._attempt(self._recover)

    def apply(self, desired: Desired | Update) -> None:
        """Bring the device to ``desired`` (called for every desired message received).

        A :class:`Desired` from the wire is resolved against the signed metadata first; an
        :class:`Update` is taken as already trusted (the flow's own tests start there).
        """
        with self._lock:
            self._wanted = desired
        self.run()

    def run(self) -> None:
        """Finish the update in progress, then start the newest desired one, if any.

        Returns once the device rests, or when the agent stops. While the disk refuses the
        state file it keeps the committed model serving and tries again, after 1 s, doubling
        up to a minute between attempts.
        """
        delay, longest = STORAGE_RETRY_S
        while not self.stopping.is_set():
            if self._attempt(self._advance):
                return
            if self.stopping.wait(delay):
                return
            delay = min(delay * 2, longest)

    def _attempt(self, work: Callable[[], None]) -> bool:
        """Run ``work``; on a storage error, serve the committed model and return False.

        A full disk holding our own partial download frees that first and tries once more:
        a partial file only saves a re-download, while the state file is what lets the
        device act at all.
        """
        reclaimed = False
        while True:
            with self._lock:
                try:
                    work()
                    return True
                except OSError as exc:
                    self._storage_trouble(exc)
                    if reclaimed or exc.errno not in _NO_SPACE or not self._reclaim_partials():
                        return False
                    reclaimed = True

    def _recover(self) -> None:
        self.slots.clean()
        record, event = resume(self._persisted)
        if record.state not in TERMINAL:
            log.warning(
                "resuming %s of revision %s (restart %d)",
                record.state,
                record.revision,
                record.resumes,
            )
            self._save(record)
        if event is not None:
            self._transition(
                event,
                reason=f"agent restarted {record.resumes - 1} times during {record.state}",
                gate=Gate.RESTARTS,
            )
        elif record.state in TERMINAL:
            self._settle()
        elif record.state == Phase.PROBATION:
            self._serve(self.record.candidate)
        else:
            self._serve(self.record.committed)
        self._recovered = True

    def _advance(self) -> None:
        if not self._recovered:
            self._recover()
        self._run_steps()
        wanted = self._wanted
        if wanted is None or self.record.state not in TERMINAL:
            return
        self._wanted = None
        if wanted.revision == self.record.revision:
            log.info("revision %d already handled (%s)", wanted.revision, self.record.state)
            return
        update = self._trusted(wanted)
        if update is not None:
            self._begin(update)
        self._run_steps()

    def _trusted(self, wanted: Desired | Update) -> Update | None:
        """The update ``wanted`` asks for, if trust lets it through; else the refusal is
        recorded and reported (gate ``signature``, ``rollback``, ``expired``, ``metadata``)
        while the committed model keeps serving."""
        try:
            update = wanted if isinstance(wanted, Update) else self._resolve(wanted)
            committed = self.record.committed
            if update.model is not None and committed is not None:
                if update.sequence < committed.sequence:
                    raise GateError(
                        Gate.ROLLBACK,
                        f"{update.target or update.model.name} has sequence {update.sequence}, "
                        f"below {committed.sequence} of the committed {committed.label}: an "
                        "older release is never installed again; an operator rollback "
                        "re-signs it under a new sequence",
                    )
            return update
        except GateError as exc:
            self._refuse_untrusted(wanted, exc)
            return None

    def _resolve(self, desired: Desired) -> Update:
        """``self.resolve`` with the downloads' retries: metadata that cannot be fetched (the
        server restarting, a network blip) is tried again with capped, jittered backoff;
        every other trust refusal is final at once."""
        return self._retrying(
            "metadata",
            lambda: self.resolve(desired),
            lambda exc: isinstance(exc, GateError) and exc.gate == Gate.METADATA,
        )

    def _refuse_untrusted(self, wanted: Desired | Update, exc: GateError) -> None:
        if isinstance(wanted, Update):
            label = f"{wanted.model.name}:{wanted.model.version}" if wanted.model else "-"
            sha = wanted.model.artifact.sha256 if wanted.model else UNKNOWN_SHA256
            sequence = wanted.sequence
        else:
            target = wanted.target
            label = target.path.removeprefix("models/").replace("/", ":") if target else "-"
            sha, sequence = UNKNOWN_SHA256, target.sequence if target else 0
        reason = str(exc).removeprefix(f"{exc.gate}: ")
        log.error("revision %d refused on %s: %s", wanted.revision, exc.gate, reason)
        committed = self.record.committed
        self._transition(
            Event.UNTRUSTED,
            revision=wanted.revision,
            candidate=SlotModel(
                slot=committed.slot.other if committed else Slot.A,
                label=label,
                sha256=sha,
                revision=wanted.revision,
                sequence=sequence,
            ),
            reason=reason,
            gate=exc.gate,
            measured=None,
            agreement=None,
        )

    def _begin(self, desired: Update) -> None:
        if desired.model is None:
            self._transition(
                Event.CLEARED,
                revision=desired.revision,
                desired=desired,
                previous=self.record.committed or self.record.previous,
                committed=None,
                candidate=None,
                reason=None,
                gate=None,
            )
            return
        manifest = desired.model
        committed = self.record.committed
        target = committed.slot.other if committed else Slot.A
        if self.slots.active() == target:  # e.g. after "run nothing" pointed elsewhere
            target = target.other
        update: dict[str, object] = {
            "revision": desired.revision,
            "desired": desired,
            "candidate": SlotModel(
                slot=target,
                label=f"{manifest.name}:{manifest.version}",
                sha256=manifest.artifact.sha256,
                revision=desired.revision,
                sequence=desired.sequence,
            ),
            "reason": None,
            "gate": None,
            "measured": None,
            "agreement": None,
        }
        profile = self._profile_of(desired)
        known = failed_before(
            self.record.failed,
            manifest.artifact.sha256,
            manifest.golden.sha256,
            lambda gate: budget_of(profile, gate),
        )
        if known is not None:
            reason = (
                f"refused without trying: {known.label} failed on this device before, on "
                f"revision {known.revision} ({known.reason})"
            )
            log.error("%s", reason)
            update.update(gate=known.gate, reason=reason)
            self._transition(Event.FAILED_BEFORE, **update)
            return
        self._transition(Event.NEW_REVISION, **update)

    def _run_steps(self) -> None:
        while self.record.state not in TERMINAL and not self.stopping.is_set():
            step = getattr(self, f"_step_{self.record.state.value}")
            event = step()
            if event is None:
                return
            self._transition(event)

    def operator_rollback(self) -> UpdateRecord:
        """Go back to the previous committed model (``edgeloop-agent rollback``).

        During probation the probation step notices the request and rolls back; when
        committed, the previous model becomes the committed one again.

        Raises:
            AgentError: there is no previous committed model to go back to.
        """
        if self.record.state == Phase.PROBATION:
            self.rollback_requested.set()
            deadline = time.monotonic() + 30
            while self.record.state == Phase.PROBATION and time.monotonic() < deadline:
                time.sleep(0.05)
            return self.record
        with self._lock:
            record = self.record
            if record.state != Phase.COMMITTED or record.previous is None:
                raise AgentError(
                    f"nothing to roll back to: state {record.state}, previous model "
                    f"{record.previous.label if record.previous else 'none'}"
                )
            try:
                self._transition(
                    Event.OPERATOR_ROLLBACK,
                    candidate=record.committed,
                    committed=record.previous,
                    previous=None,
                    reason="operator rollback",
                    gate=Gate.OPERATOR,
                )
            except OSError as exc:
                self._storage_trouble(exc)
                raise AgentError(
                    f"cannot write {self.store.path} ({exc.strerror or exc}); nothing was "
                    "rolled back: free space on the device's disk and try again"
                ) from exc
            return self.record

    # ------------------------------------------------------------------ steps

    def _step_downloading(self) -> Event | None:
        manifest = self._manifest()
        try:
            check_size(manifest, self._profile())
        except GateError as exc:
            return self._fail(Event.REJECTED, exc.gate, str(exc))
        refs = (manifest.artifact, manifest.golden)
        # What is already here (a download a restart interrupted) needs no room again.
        needed = sum(ref.size - held_bytes(ref, self.blobs) for ref in refs)
        free = shutil.disk_usage(self.config.workdir).free
        if free < needed + DISK_MARGIN_BYTES:
            return self._fail(
                Event.NO_SPACE,
                Gate.DISK,
                f"{free / 2**20:.1f} MB free, the download needs {needed / 2**20:.1f} MB more "
                f"plus {DISK_MARGIN_BYTES / 2**20:.0f} MB margin; free space on the device",
            )
        try:
            for ref in refs:
                self._fetch(ref)
        except ArtifactError as exc:
            return self._fail(Event.CORRUPT, Gate.VERIFY, str(exc))
        except StorageError as exc:
            return self._fail(Event.NO_SPACE, Gate.DISK, str(exc))
        except TransportError as exc:
            return (
                None
                if self.stopping.is_set()
                else self._fail(Event.DOWNLOAD_FAILED, Gate.DOWNLOAD, str(exc))
            )
        return Event.DOWNLOADED

    def _step_verifying(self) -> Event | None:
        manifest = self._manifest()
        for ref in (manifest.artifact, manifest.golden):
            path = self.blobs / ref.sha256
            if not path.exists() or path.stat().st_size != ref.size:
                return self._fail(
                    Event.CORRUPT, Gate.VERIFY, f"{path.name} is missing or truncated"
                )
            if sha256_file(path) != ref.sha256:
                path.unlink()
                return self._fail(
                    Event.CORRUPT, Gate.VERIFY, f"{ref.url}: SHA-256 mismatch on disk"
                )
        candidate = self._candidate()
        try:
            self.slots.install(
                candidate.slot,
                self.blobs / manifest.artifact.sha256,
                self.blobs / manifest.golden.sha256,
                manifest,
            )
        except OSError as exc:
            return self._fail(
                Event.NO_SPACE,
                Gate.DISK,
                f"cannot install into slot {candidate.slot} ({exc.strerror or exc}); free "
                "space on the device's disk",
            )
        return Event.VERIFIED

    def _step_validating(self) -> Event | None:
        manifest = self._manifest()
        profile = self._profile()
        contents = self.slots.contents(self._candidate().slot, verify=False)
        verdict = validate_in_child(
            ValidationRequest(
                model_path=contents.model_path,
                golden_path=contents.golden_path,
                manifest=manifest,
                profile=profile,
                inferences=self.config.inferences,
            ),
            self.stopping,
        )
        if verdict is None:
            return None
        # Kept even when a gate refuses the model: the server calibrates its picture of
        # this device class from what the device measured, over budget or not.
        measured = verdict.measured
        self.record = self.record.model_copy(update={"measured": measured})
        if verdict.gate is not None:
            log.error("validation refused %s: %s", contents.label, verdict.reason)
            return self._fail(Event.REJECTED, verdict.gate, verdict.reason or str(verdict.gate))
        assert measured is not None and measured.latency is not None
        try:
            check_budgets(measured.latency, measured.peak_rss_mb, profile)
        except GateError as exc:
            log.error("validation refused %s: %s", contents.label, exc)
            return self._fail(Event.REJECTED, exc.gate, str(exc))
        log.info(
            "%s passed every gate: p95 %.3f ms, peak RSS %.1f MB",
            contents.label,
            measured.latency.p95_ms,
            measured.peak_rss_mb,
        )
        return Event.PASSED

    def _step_activating(self) -> Event | None:
        candidate = self._candidate()
        try:
            loaded = self._load(candidate)  # validated in the child; this process opens it now
        except (AgentError, MemoryError) as exc:
            return self._fail(Event.ACTIVATION_FAILED, Gate.ACTIVATE, str(exc) or repr(exc))
        self.slots.point_to(candidate.slot)
        self.host.swap(loaded)
        self._served = candidate
        self._announce()
        return Event.ACTIVATED

    def _step_probation(self) -> Event | None:
        """Watch live traffic for the window; shadow-run the previous model on a sample.

        Live traffic is the local endpoint's requests and the calls of applications that run
        the model in-process (their reports, :mod:`edgeloop.agent.local`), which also
        shadow-run a sample of their own inputs. Without live requests the golden inputs serve
        as traffic, so a device nobody calls yet still compares the two models before
        committing.
        """
        try:
            return self._watch_probation()
        finally:
            self._probation = None
            self._announce()

    def _watch_probation(self) -> Event | None:
        manifest = self._manifest()
        profile = self._profile()
        candidate = self._candidate()
        if self.host.model is None or self.host.model.manifest != manifest:
            self._serve(candidate)
        previous = self._previous_loaded()
        if previous is not None:
            self.host.start_shadow(
                previous, manifest.agreement_metric, every=self.config.shadow_every
            )
        committed = self.record.committed
        self._probation = ProbationNotice(
            id=f"{self.record.revision}-{os.urandom(4).hex()}",
            previous=(
                ServedModel(label=committed.label, slot=committed.slot, sha256=committed.sha256)
                if previous is not None and committed is not None
                else None
            ),
            metric=manifest.agreement_metric,
            shadow_every=self.config.shadow_every,
        )
        self._announce()
        since = time.monotonic()
        try:
            golden = load_golden(
                self.slots.contents(self._candidate().slot, verify=False).golden_path,
                list(self.host.model.input_names) if self.host.model else [],
            )
            for index in range(golden.count):
                self.host.infer(golden.sample(index))
        except AgentError as exc:
            self.host.stop_shadow()
            return self._fail(Event.BREACH, Gate.ERRORS, f"probe inference failed: {exc}")
        deadline = since + self.config.probation_s
        while time.monotonic() < deadline:
            if self.rollback_requested.is_set():
                self.rollback_requested.clear()
                self.host.stop_shadow()
                return self._fail(Event.OPERATOR_ROLLBACK, Gate.OPERATOR, "operator rollback")
            if self.stopping.wait(0.05):
                self.host.stop_shadow()
                return None
        # In-process calls count too: wait (briefly) for reports that cover the window.
        reports = await_reports(
            self.config.workdir,
            candidate.sha256,
            self._probation.id,
            after=time.time(),
            wait=self.stopping.wait,
        )
        if self.stopping.is_set():
            self.host.stop_shadow()
            return None
        latencies, errors = self.host.samples(since)
        traffic = probation_traffic(reports, candidate.sha256, self._probation.id)
        window = merged_window(latencies, errors, time.monotonic() - since, traffic)
        compared, agreement = traffic.agreement_with(*self.host.stop_shadow())
        self.record = self.record.model_copy(update={"agreement": agreement})
        local = traffic.counts
        in_process = (
            f" ({local.errors} of {local.calls} in-process calls, from {traffic.processes} "
            "application processes)"
            if local.calls
            else ""
        )
        if window.error_rate > self.config.max_error_rate:
            return self._fail(
                Event.BREACH,
                Gate.ERRORS,
                f"{window.errors} of {window.requests} requests failed in probation{in_process}",
            )
        budget = profile.latency_budget_ms * self.config.probation_latency_factor
        # A p95 of a handful of requests is its slowest one (a scheduler hiccup, the shadow
        # thread): judge latency only on enough live traffic; validation measured it already.
        enough = (
            window.latency is not None and window.latency.n >= self.config.probation_min_samples
        )
        if enough and window.latency is not None and window.latency.p95_ms > budget:
            return self._fail(
                Event.BREACH,
                Gate.LATENCY,
                f"live p95 {window.latency.p95_ms:.3f} ms over {budget:.3f} ms in probation"
                f"{in_process}",
            )
        if agreement is not None and agreement < manifest.min_agreement:
            shadowed = f", {traffic.compared} of them in-process" if traffic.compared else ""
            return self._fail(
                Event.BREACH,
                Gate.AGREEMENT,
                f"agrees with the previous model on {agreement:.3f} of {compared} shadow "
                f"samples{shadowed} ({manifest.agreement_metric}), below "
                f"{manifest.min_agreement}",
            )
        return Event.HEALTHY

    # ------------------------------------------------------------------ transitions

    def _transition(self, event: Event, **changes: object) -> None:
        state = next_state(self.record.state, event)
        if state == Phase.COMMITTED and event == Event.HEALTHY:
            changes = {
                "committed": self.record.candidate,
                "previous": self.record.committed,
                **changes,
            }
        record = self.record.enter(state, **changes)
        if event not in (Event.FAILED_BEFORE, Event.UNTRUSTED) and worth_remembering(
            record.state, record.gate
        ):
            record = record.model_copy(update={"failed": self._remembered(record)})
        self._save(record)
        log.info("%s -> %s on %s", event.value, state, record.revision)
        if state in TERMINAL:
            self._settle()

    def _remembered(self, record: UpdateRecord) -> list[FailedModel]:
        """``record.failed`` with its own candidate added: saved with the verdict, at once."""
        desired, candidate, gate = record.desired, record.candidate, record.gate
        assert desired is not None and desired.model is not None
        assert candidate is not None and gate is not None
        entry = FailedModel(
            sha256=candidate.sha256,
            golden_sha256=desired.model.golden.sha256,
            label=candidate.label,
            revision=candidate.revision,
            gate=gate,
            reason=(record.reason or "")[:500],
            budget=budget_of(self._profile_of(desired), gate),
        )
        return remember_failure(record.failed, entry)

    def _save(self, record: UpdateRecord) -> None:
        self.store.save(record)
        self.record = self._persisted = record
        if os.environ.get(KILL_AT_ENV) == record.state.value:
            os.kill(os.getpid(), signal.SIGKILL)
        self.hooks.on_state(record)

    def _settle(self) -> None:
        """Make disk and memory match the resting state's record; report once."""
        record = self.record
        self.host.stop_shadow()
        self.slots.point_to(record.committed.slot if record.committed else None)
        self._serve(record.committed)
        if self.blobs.exists():
            shutil.rmtree(self.blobs, ignore_errors=True)
        release_free_memory()
        if not record.reported and record.candidate is not None:
            try:
                self.hooks.on_report(self._report())
            except Exception:  # the outbox on a full disk, say: the next start queues it again
                log.exception("could not queue the report of revision %s", record.revision)
                return
            self._save(record.model_copy(update={"reported": True}))

    def _storage_trouble(self, exc: OSError) -> None:
        """The flow cannot go on (mostly: the disk refused the state file): back to what is
        persisted, serve the committed model, and say what to do."""
        self.record = self._persisted
        committed = self.record.committed
        log.error(
            "the update cannot go on (%s); serving %s and trying again. If the disk under %s "
            "is full or read-only, free space on it or repair it",
            exc,
            committed.label if committed else "nothing",
            self.config.workdir,
        )
        self.host.stop_shadow()
        self._serve(committed)

    def _reclaim_partials(self) -> int:
        """Delete our own partial downloads; returns the bytes freed."""
        freed = 0
        for part in self.blobs.glob("*.part"):
            try:
                size = part.stat().st_size
                part.unlink()
            except OSError:
                continue
            freed += size
        if freed:
            log.warning("removed %.1f MB of partial downloads to write the state", freed / 2**20)
        return freed

    def _fail(self, event: Event, gate: Gate, reason: str) -> Event:
        self.record = self.record.model_copy(update={"gate": gate, "reason": reason})
        log.error("%s: %s", gate, reason)
        return event

    # ------------------------------------------------------------------ helpers

    def _report(self) -> Report:
        record = self.record
        candidate = record.candidate
        assert candidate is not None
        measured = record.measured
        ok = record.state == Phase.COMMITTED and record.gate is None
        detail: dict[str, bool] = {}
        if measured is not None:
            model = record.desired.model if record.desired else None
            size = model.artifact.size if model else 0
            verdicts = budget_verdicts(
                self._profile(),
                latency=measured.latency,
                peak_rss_mb=measured.peak_rss_mb,
                size_bytes=size,
            )
            if record.gate in BUDGET_GATES:
                verdicts[record.gate] = False  # refused before the figure could show it
            detail = {gate.value: within for gate, within in verdicts.items()}
        return Report(
            device_id=self.config.device_id,
            revision=record.revision or 0,
            model=candidate.label,
            artifact_sha256=candidate.sha256,
            ok=ok,
            phase=record.state,
            verified=record.gate not in UNVERIFIED_GATES,
            golden_max_abs_err=measured.golden_max_abs_err if measured else None,
            latency=measured.latency if measured else None,
            peak_rss_mb=measured.peak_rss_mb if measured else None,
            energy=measured.energy if measured else None,
            within_budget=all(detail.values()) if measured else None,
            budget_detail=detail,
            error=record.reason,
            gate=record.gate,
            running=record.committed.label if record.committed else None,
            providers=measured.providers if measured else [],
            agreement=record.agreement,
        )

    def _serve(self, model: SlotModel | None) -> None:
        current = self.host.model
        if model is None:
            self.host.swap(None)
            self._served = None
        elif current is not None and current.manifest.artifact.sha256 == model.sha256:
            self._served = model
        else:
            try:
                self.host.swap(self._load(model))
                self._served = model
            except AgentError as exc:
                log.error("cannot serve %s from slot %s: %s", model.label, model.slot, exc)
                self.host.swap(None)
                self._served = None
        self._announce()

    def _announce(self) -> None:
        """Tell in-process applications what serves now and how (``serving.json``), when
        that changed. A disk that refuses the file leaves them on their model, as it leaves
        the agent on its own."""
        model, served = self.host.model, self._served
        serving = Serving(
            model=(
                ServedModel(label=served.label, slot=served.slot, sha256=served.sha256)
                if model is not None
                and served is not None
                and model.manifest.artifact.sha256 == served.sha256
                else None
            ),
            profile=self._profile(),
            probation=self._probation,
        )
        if serving == self._announced:
            return
        try:
            announce(self.config.workdir, serving)
        except OSError as exc:
            log.error(
                "cannot tell in-process applications that %s serves (%s): they keep their model",
                serving.model.label if serving.model else "nothing",
                exc,
            )
            return
        self._announced = serving

    def _load(self, model: SlotModel) -> LoadedModel:
        contents: SlotContents = self.slots.contents(model.slot)
        session = open_session(contents.model_path, self._profile())
        return LoadedModel.of(contents.label, session, contents.manifest)

    def _previous_loaded(self) -> LoadedModel | None:
        committed = self.record.committed
        if committed is None:
            return None
        try:
            return self._load(committed)
        except AgentError as exc:
            log.warning("no shadow: previous model %s unavailable: %s", committed.label, exc)
            return None

    def _fetch(self, ref: FileRef) -> Path:
        """Download with retries: capped exponential backoff with full jitter."""
        return self._retrying(
            "download",
            lambda: fetch(ref, self.blobs, self._http, progress_line(ref, self.blobs)),
            lambda exc: isinstance(exc, TransportError),
        )

    def _retrying(
        self, what: str, work: Callable[[], T], retryable: Callable[[AgentError], bool]
    ) -> T:
        """``work`` tried up to ``download_attempts`` times while it raises a retryable
        error, with capped exponential backoff and full jitter; stops early when the agent
        stops. The last error (or any other) goes up as it is."""
        attempts = self.config.download_attempts
        for attempt in range(1, attempts + 1):
            try:
                return work()
            except AgentError as exc:
                if not retryable(exc) or attempt == attempts or self.stopping.is_set():
                    raise
                delay = random.uniform(0, min(30.0, 0.5 * 2**attempt))
                log.warning("%s attempt %d: %s; retrying in %.1f s", what, attempt, exc, delay)
                if self.stopping.wait(delay):
                    raise
        raise AssertionError("unreachable")

    def _desired(self) -> Update:
        assert self.record.desired is not None, "an update without a desired state"
        return self.record.desired

    def _profile(self) -> DeviceProfile:
        """The budgets of the current update (the device's own without one)."""
        desired = self.record.desired
        return self._profile_of(desired) if desired else self.config.profile

    def _profile_of(self, desired: Update) -> DeviceProfile:
        return effective_profile(self.config.profile, desired.profile)

    def _manifest(self) -> ModelManifest:
        manifest = self._desired().model
        assert manifest is not None
        return manifest

    def _candidate(self) -> SlotModel:
        assert self.record.candidate is not None
        return self.record.candidate
