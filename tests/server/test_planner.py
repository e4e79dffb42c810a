"""Which model a device gets: the most accurate that fits its profile."""

from __future__ import annotations

from edgeloop.agent.protocol import DeviceProfile
from edgeloop.server.planner import Candidate, choose_model

FP32 = Candidate(
    id=1, label="cnn:fp32", accuracy=0.986, size_bytes=400_000, host_latency_p95_ms=0.20
)
INT8 = Candidate(
    id=2, label="cnn:int8", accuracy=0.983, size_bytes=110_000, host_latency_p95_ms=0.15
)


def profile(**overrides: object) -> DeviceProfile:
    fields = dict(name="p", cpu_threads=1, memory_budget_mb=256, latency_budget_ms=5.0)
    return DeviceProfile.model_validate(fields | overrides)


def test_a_roomy_device_gets_the_most_accurate_model() -> None:
    assert choose_model(profile(), [INT8, FP32]).candidate == FP32


def test_a_storage_budget_excludes_models_that_do_not_fit() -> None:
    choice = choose_model(profile(model_size_budget_kb=128), [INT8, FP32])
    assert choice.candidate == INT8
    assert "1/2 fitting" in choice.reason


def test_equal_accuracy_goes_to_the_smaller_file() -> None:
    twin = Candidate(
        id=3, label="cnn:int8b", accuracy=FP32.accuracy, size_bytes=90_000, host_latency_p95_ms=0.1
    )
    assert choose_model(profile(), [FP32, twin]).candidate == twin


def test_when_nothing_fits_the_closest_is_sent_and_the_reason_says_why() -> None:
    choice = choose_model(profile(latency_budget_ms=0.01, model_size_budget_kb=10), [INT8, FP32])
    assert choice.candidate == INT8
    assert choice.reason.startswith("no candidate fits 'p'; closest is cnn:int8")
    assert "size 107 KB > 10 KB" in choice.reason and "host p95" in choice.reason


def test_no_registered_model_means_no_model() -> None:
    assert choose_model(profile(), []).candidate is None


def test_versions_left_out_as_unusable_are_named_in_the_reason() -> None:
    choice = choose_model(profile(), [INT8], unusable=["cnn:high", "cnn:nan"])
    assert choice.candidate == INT8
    assert choice.reason.endswith("; skipped cnn:high, cnn:nan: invalid stored figures or I/O")


def test_when_every_version_is_unusable_the_reason_does_not_claim_none_is_registered() -> None:
    choice = choose_model(profile(), [], unusable=["cnn:high"])
    assert choice.candidate is None
    assert choice.reason == "no usable model; skipped cnn:high: invalid stored figures or I/O"


def test_an_error_metric_ranks_the_lowest_first_and_skips_the_accuracy_floor() -> None:
    def regressor(id_: int, mae: float) -> Candidate:
        return Candidate(
            id=id_, label=f"reg:{id_}", accuracy=mae, size_bytes=1000, host_latency_p95_ms=0.1,
            metric_name="mae", higher_is_better=False,
        )  # fmt: skip

    choice = choose_model(profile(min_accuracy=0.9), [regressor(1, 41.5), regressor(2, 38.2)])
    assert choice.candidate is not None and choice.candidate.id == 2
    assert "mae 38.2" in choice.reason
