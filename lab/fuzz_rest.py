"""Hostile clients for the REST API: Schemathesis against a running control plane.

:func:`fuzz_rest` reads the server's own ``/openapi.json`` and runs every Schemathesis phase
on every operation (its boundary-value coverage cases, then ``examples`` generated requests
per operation, valid and invalid ones, then chained ones), with every check: no 5xx, only
documented statuses, bodies and headers as documented, schema-valid requests accepted and
invalid ones refused. The test suite runs it with a few examples per operation; a benchmark
runs the same function with many.

The server's contract has one thing a schema cannot say: an artifact upload whose body does
not hash to the SHA-256 in its path is refused with 422 whatever the schema allows, so that
operation may answer 422 to a schema-valid request. And one thing Schemathesis gets wrong: it
sends a number or a boolean where a query parameter wants text (``?tag=1e+16``) and counts
the server's acceptance as a failure, though on the wire that is valid text; such a failure
is dropped when the query string as sent follows the document (:func:`_query_as_sent_is_valid`).

It writes nothing to the working directory (no Hypothesis example database, no
Schemathesis cache): a run is a measurement, not a search that remembers its last findings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from schemathesis import Case, Response
    from schemathesis.core.failures import Failure
    from schemathesis.engine.recorder import ScenarioRecorder

__all__ = ["FuzzFailure", "FuzzReport", "fuzz_rest"]

ENROL_PATH = "/api/v1/enrol"
ACCEPTED_ANYWHERE = ["2xx", "3xx", 401, 403, 404, 409, 429]
"""What a schema-valid request may get: done, or refused for the server's state (a missing
resource, a conflict), never for its shape. Schemathesis's default list also has 5xx, which
the no-server-error check reports on its own."""


@dataclass(frozen=True)
class FuzzFailure:
    """One unique failure: Schemathesis counts one per operation and kind."""

    code: str
    """Schemathesis's failure code, e.g. ``ST101`` (a server error); ``st explain`` words it."""
    title: str
    operation: str
    status: int | None
    reproduce: str
    """A curl command line that sends the failing request."""

    def __str__(self) -> str:
        answer = f" -> {self.status}" if self.status is not None else ""
        return f"{self.code} {self.title}: {self.operation}{answer}\n    {self.reproduce}"


@dataclass
class FuzzReport:
    operations: int = 0
    """Operations of the document that were exercised."""
    cases: int = 0
    """Requests sent."""
    server_errors: int = 0
    """Answers with a 5xx status (each counted, not only the unique ones)."""
    failures: list[FuzzFailure] = field(default_factory=list)
    """Unique contract failures, 5xx included."""
    errors: list[str] = field(default_factory=list)
    """What kept Schemathesis from testing (an unreachable server, an invalid document)."""

    def summary(self) -> str:
        lines = [
            f"{self.cases} cases over {self.operations} operations: "
            f"{self.server_errors} answers with 5xx, {len(self.failures)} unique failures, "
            f"{len(self.errors)} errors"
        ]
        lines += [str(failure) for failure in self.failures]
        lines += [f"error: {error}" for error in self.errors]
        return "\n".join(lines)


def fuzz_rest(
    base_url: str,
    *,
    examples: int = 10,
    seed: int = 0,
    known: Mapping[str, Sequence[str | int]] | None = None,
    workers: int = 1,
    request_timeout_s: float = 30.0,
    token: str | None = None,
) -> FuzzReport:
    """Run Schemathesis against the control plane at ``base_url`` and count what it found.

    ``token``: an operator token, sent with every request so they reach past authentication
    to the routes themselves; Schemathesis's own check that operations enforce the bearer
    scheme they declare (``ignored_auth``) still sends requests without it, or with a wrong
    one, and expects them refused.

    ``examples``: generated requests per operation in the fuzzing phase (the coverage phase
    adds its own boundary cases). ``known``: path parameter name → values that exist on the
    server (a device id, a model name); half the generated requests use one, so operations
    reach past their 404. ``seed``: Schemathesis's random seed.

    Raises:
        ImportError: Schemathesis is not installed (``pip install -e .[dev]``).
    """
    import schemathesis
    from schemathesis.engine import events, from_schema
    from schemathesis.engine.statistic import Statistic

    config = schemathesis.Config.from_dict(
        _config(examples, seed, known or {}, workers, request_timeout_s, token)
    )
    schema = schemathesis.openapi.from_url(
        f"{base_url.rstrip('/')}/openapi.json", config=config, timeout=request_timeout_s
    )
    document = schema.raw_schema

    @schema.hook
    def filter_failure(_context: object, failure: Failure, case: Case, response: Response) -> bool:
        return not (
            (
                failure.code == NEGATIVE_DATA_ACCEPTED
                and _query_as_sent_is_valid(document, case, response.request.url or "")
            )
            or (
                # A JSON Schema cannot say what a signature-valid CSR is: a string the schema
                # allows and the server refuses as no CSR (422) is the route doing its job.
                failure.code == POSITIVE_DATA_REJECTED
                and case.operation.path == ENROL_PATH
                and response.status_code == 422
                and "CSR" in response.text
            )
        )

    report = FuzzReport()
    statistic = Statistic()
    samples: dict[tuple[str | None, str], tuple[str, int | None]] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            statistic.on_scenario_finished(event.recorder)
            _count(event.recorder, report, samples)
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.info.format()}".strip())
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception}")
    report.operations = len(statistic.tested_operations | statistic.errored_operations)
    report.cases = statistic.total_cases
    for failure, case_id in statistic.unique_failures_map.items():
        reproduce, status = samples.get((failure.operation, failure.code), ("", None))
        report.failures.append(
            FuzzFailure(
                code=failure.code,
                title=failure.title,
                operation=failure.operation or "(the run as a whole)",
                status=status,
                reproduce=reproduce or f"st replay {case_id}",
            )
        )
    report.failures.sort(key=lambda failure: (failure.operation, failure.code))
    return report


NEGATIVE_DATA_ACCEPTED = "ST201"
POSITIVE_DATA_REJECTED = "ST202"
"""Schemathesis's code for "Schema-violating request accepted"."""


def _query_as_sent_is_valid(document: Mapping[str, Any], case: Case, url: str) -> bool:
    """Whether a request that Schemathesis generated as invalid only in its query string was
    valid as sent: every value, read as the text it became, follows its parameter's schema
    (a string parameter takes any text the schema allows; a number must parse as one)."""
    from jsonschema import Draft202012Validator

    meta = case.meta
    if meta is None or any(
        component.mode.is_negative
        for location, component in meta.components.items()
        if location.value != "query"
    ):
        return False
    operation = document["paths"][case.operation.path][case.operation.method.lower()]
    sent = parse_qs(urlsplit(url).query, keep_blank_values=True)
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "query":
            continue
        texts = sent.get(parameter["name"])
        if texts is None:
            if parameter.get("required"):
                return False
            continue
        schema = {**parameter["schema"], "components": document.get("components", {})}
        if not any(
            Draft202012Validator(schema).is_valid(value) for value in _readings(texts, schema)
        ):
            return False
    return True


def _readings(texts: list[str], schema: Mapping[str, Any]) -> list[object]:
    """The values ``texts`` can stand for under ``schema``: text as text, as a number, as a
    boolean; one value, or a list for an array parameter (``?tag=a&tag=b``)."""
    types = {option.get("type") for option in schema.get("anyOf", [schema])}
    if "array" in types:
        return [texts]
    text = texts[-1]
    readings: list[object] = [text]
    if text in ("true", "false"):
        readings.append(text == "true")
    try:
        readings.append(int(text))
    except ValueError:
        try:
            readings.append(float(text))
        except ValueError:
            pass
    return readings


def _count(
    recorder: ScenarioRecorder,
    report: FuzzReport,
    samples: dict[tuple[str | None, str], tuple[str, int | None]],
) -> None:
    """Count one scenario's 5xx answers, and keep the first failing request of each kind of
    failure (as curl, with its status) to show with it."""
    for case_id, interaction in recorder.interactions.items():
        status = interaction.response.status_code if interaction.response else None
        if status is not None and status >= 500:
            report.server_errors += 1
        for check in recorder.checks.get(case_id, []):
            if check.failure_info is not None:
                failure = check.failure_info.failure
                key = (failure.operation, failure.code)
                samples.setdefault(key, (check.failure_info.code_sample.strip(), status))


def _config(
    examples: int,
    seed: int,
    known: Mapping[str, Sequence[str | int]],
    workers: int,
    request_timeout_s: float,
    token: str | None,
) -> dict[str, object]:
    """Schemathesis's configuration, as its ``schemathesis.toml`` would hold it."""
    return {
        "headers": {"Authorization": f"Bearer {token}"} if token else {},
        "seed": seed,
        "workers": workers,
        "request-timeout": request_timeout_s,
        "cache": {"enabled": False},
        "generation": {"mode": "all", "max-examples": examples, "database": "none"},
        "checks": {
            "enabled": True,
            "positive_data_acceptance": {"expected-statuses": ACCEPTED_ANYWHERE},
        },
        "dictionaries": {name: {"values": list(values)} for name, values in known.items()},
        "parameters": {f"path.{name}": {"dictionary": name, "probability": 0.5} for name in known},
        "operations": [
            {
                "include-method": "PUT",
                "include-path": "/api/v1/artifacts/{sha256}",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": [*ACCEPTED_ANYWHERE, 422]}
                },
            }
        ],
    }
