"""``edgeloop bench compress``: the three cases against the baselines a user would pick.

For every case, in one run: the chosen candidate, plain ``quantize_dynamic`` with defaults,
and (image) torch unstructured pruning exported densely; size, task metric and latency at 1
and 2 threads, latencies interleaved so ratios are fair on a shared host.
"""

from __future__ import annotations

import copy
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgeloop.compressor import evaluate
from edgeloop.lab.bench import Figure

log = logging.getLogger("edgeloop.lab.bench.compress")


@dataclass
class CaseRow:
    """One model of one case in the benchmark table."""

    case: str
    model: str
    size_bytes: int
    metric_name: str
    metric: float
    latency_1t_ms: float
    latency_2t_ms: float

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def latencies(
    models: dict[str, Path], feed: dict[str, Any], calls: int = 400
) -> dict[str, tuple[float, float]]:
    """``name → (p50 at 1 thread, p50 at 2 threads)``, each interleaved across models."""
    one = evaluate.compare_latency(models, feed, threads=1, calls=calls)
    two = evaluate.compare_latency(models, feed, threads=2, calls=calls)
    return {name: (one[name][0], two[name][0]) for name in models}


def plain_quantize_dynamic(source: Path, work: Path, task: Any) -> Path:
    """What a user gets from ``quantize_dynamic(in, out)`` with every default."""
    from onnxruntime.quantization import quantize_dynamic

    out = work / "baseline-quantize-dynamic.onnx"
    quantize_dynamic(str(source), str(out))
    return out


def image_case(work: Path, progress: bool = True) -> tuple[dict[str, float], list[CaseRow]]:
    from edgeloop.agent.profiles import PROFILES
    from edgeloop.compressor.compress import compress
    from edgeloop.compressor.examples import example_recipe
    from edgeloop.compressor.examples.digits import DigitsTask
    from edgeloop.compressor.recipe import load_recipe

    task = DigitsTask()
    result = compress(
        task,
        load_recipe(example_recipe("image")),
        PROFILES["sensor-hub"],
        work / "image",
        progress=progress,
    )
    if result.chosen is None or result.chosen.model_path is None:
        raise RuntimeError(f"image: {result.reason}")
    fp32 = Path(str(result.baseline.model_path))
    chosen = Path(result.chosen.model_path)
    baseline = plain_quantize_dynamic(fp32, work / "image", task)
    pruned = _dense_unstructured(task, work / "image")
    models = {"fp32": fp32, "chosen": chosen, "quantize_dynamic": baseline, "pruned_dense": pruned}
    timing = latencies(models, task.latency_feed())
    scores = {name: task.score(path)["accuracy"] for name, path in models.items()}
    sizes = {name: path.stat().st_size for name, path in models.items()}
    rows = [
        CaseRow(
            "image",
            name if name != "chosen" else f"chosen: {result.chosen.label}",
            sizes[name],
            "accuracy",
            scores[name],
            *timing[name],
        )
        for name in models
    ]
    figures = {
        "image.size_ratio": sizes["fp32"] / sizes["chosen"],
        "image.accuracy_drop_pt": (scores["fp32"] - scores["chosen"]) * 100,
        "image.speedup_1t": timing["fp32"][0] / timing["chosen"][0],
        "image.baseline_size_ratio": sizes["fp32"] / sizes["quantize_dynamic"],
        "image.baseline_metric": scores["quantize_dynamic"],
        "image.baseline_speedup_1t": timing["fp32"][0] / timing["quantize_dynamic"][0],
        "image.pruned_dense_size_ratio": sizes["fp32"] / sizes["pruned_dense"],
    }
    return figures, rows


def _dense_unstructured(task: Any, work: Path) -> Path:
    """torch unstructured 50% magnitude pruning, exported as the dense ONNX a user would ship."""
    import torch
    from torch.nn.utils import prune

    from edgeloop.compressor.export import export_model

    model = copy.deepcopy(task.teacher())
    layers = [
        (m, "weight") for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)
    ]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=0.5)
    for module, name in layers:
        prune.remove(module, name)
    return export_model(model, task.export_spec(), work / "baseline-pruned-dense.onnx")


def control_case(work: Path, progress: bool = True) -> tuple[dict[str, float], list[CaseRow]]:
    from edgeloop.compressor.examples.pendulum import PendulumTask, build_control

    summary = build_control(work / "control", progress=progress)
    picked = {
        "teacher": summary["teacher"],
        "chosen": summary["chosen"],
        "quantize_dynamic": summary["baseline"],
    }
    timing = latencies(
        {k: Path(v["path"]) for k, v in picked.items()}, PendulumTask(progress=False).latency_feed()
    )
    rows = [
        CaseRow(
            "control",
            name if name != "chosen" else f"chosen: {row['label']}",
            row["size_bytes"],
            "return_mean",
            row["return_mean"],
            *timing[name],
        )
        for name, row in picked.items()
    ]
    return dict(summary["figures"]), rows


def nlp_case(work: Path, progress: bool = True) -> tuple[dict[str, float], list[CaseRow]]:
    from edgeloop.compressor.examples.minilm import build_nlp

    out = work / "nlp"
    result = build_nlp(out, progress=progress)
    figures = {
        f"nlp.{key}": result[key]
        for key in (
            "size_ratio",
            "speedup_1t",
            "speedup_2t",
            "cosine_mean",
            "cosine_min",
            "nn_agreement",
            "speedup_vs_baseline_1t",
            "baseline_size_ratio",
            "baseline_metric",
        )
    }
    metric = {
        "fp32": 1.0,
        "baseline": result["baseline_metric"],
        "int8_only": result.get("int8_only_cosine_mean", float("nan")),
        "candidate": result["cosine_mean"],
    }
    rows = [
        CaseRow(
            "nlp",
            name,
            int(result[f"{name}_bytes"]),
            "cosine_mean",
            metric[name],
            result[f"{name}_ms_1t"],
            result[f"{name}_ms_2t"],
        )
        for name in ("fp32", "baseline", "int8_only", "candidate")
    ]
    figures["prune.structured_speedup"] = structured_speedup(out / "fp32.onnx", work / "prune")
    return figures, rows


def structured_speedup(fp32: Path, work: Path) -> float:
    """Latency of the dense MiniLM ÷ the same with half of every FFN's neurons removed
    (``prune_structured`` with ``scope: ffn``, no fine-tuning: speed only), 1 thread."""
    from edgeloop.compressor.examples.minilm import MiniLMTask
    from edgeloop.compressor.passes import PassContext, TorchModel, get_pass

    task = MiniLMTask()
    work.mkdir(parents=True, exist_ok=True)
    prune = get_pass("prune_structured")
    config = prune.config({"ratio": 0.5, "scope": "ffn", "finetune_epochs": 0})
    pruned = prune().run(TorchModel(task.teacher()), config, PassContext(task, work))
    export = get_pass("export")
    exported = export().run(pruned, export.config(), PassContext(task, work))
    timing = evaluate.compare_latency(
        {"dense": fp32, "pruned": exported.path}, task.latency_feed(), threads=1, calls=100
    )
    return timing["dense"][0] / timing["pruned"][0]


GOALS: dict[str, tuple[str, str]] = {
    "image.size_ratio": ("x", ">= 4"),
    "image.accuracy_drop_pt": ("points", "<= 0.5"),
    "image.speedup_1t": ("x", ">= 1"),
    "image.baseline_size_ratio": ("x", "baseline"),
    "image.baseline_metric": ("accuracy", "baseline"),
    "image.baseline_speedup_1t": ("x", "baseline"),
    "image.pruned_dense_size_ratio": ("x", "baseline"),
    "nlp.size_ratio": ("x", ">= 3.8"),
    "nlp.speedup_1t": ("x", ">= 2"),
    "nlp.speedup_2t": ("x", "info"),
    "nlp.cosine_mean": ("cosine", ">= 0.99"),
    "nlp.cosine_min": ("cosine", ">= 0.97"),
    "nlp.nn_agreement": ("fraction", ">= 0.95"),
    "nlp.speedup_vs_baseline_1t": ("x", "> 1"),
    "nlp.baseline_size_ratio": ("x", "baseline"),
    "nlp.baseline_metric": ("cosine", "baseline"),
    "control.return_ratio": ("ratio", ">= 0.95"),
    "control.size_ratio": ("x", "higher is better"),
    "control.baseline_size_ratio": ("x", "baseline"),
    "control.baseline_metric": ("return", "baseline"),
    "control.baseline_return_ratio": ("ratio", "baseline"),
    "prune.structured_speedup": ("x", ">= 1.6"),
}


def run_cases(
    work: Path, cases: list[str], progress: bool = True
) -> tuple[dict[str, float], list[CaseRow]]:
    """Run the named cases; a case that fails is logged and its figures are absent."""
    runners = {"image": image_case, "nlp": nlp_case, "control": control_case}
    figures: dict[str, float] = {}
    rows: list[CaseRow] = []
    for case in cases:
        try:
            case_figures, case_rows = runners[case](work, progress)
        except Exception:
            log.exception("case %s failed", case)
            continue
        figures |= case_figures
        rows += case_rows
    return figures, rows


def run(args: Any) -> list[Figure]:
    cases = args.cases.split(",") if getattr(args, "cases", None) else ["image", "nlp", "control"]
    figures, rows = run_cases(args.workdir / "bench-compress", cases)
    table = Table(title="compression cases (latency p50, batch 1)")
    for column in ("case", "model", "size KB", "metric", "value", "1 thread ms", "2 threads ms"):
        table.add_column(
            column, justify="left" if column in ("case", "model", "metric") else "right"
        )
    for row in rows:
        table.add_row(
            row.case,
            row.model,
            f"{row.size_bytes / 1024:.1f}",
            row.metric_name,
            f"{row.metric:.4f}",
            f"{row.latency_1t_ms:.3f}",
            f"{row.latency_2t_ms:.3f}",
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    args.extra = {"cases": [row.to_json() for row in rows]}
    missing = [name for name in GOALS if name.split(".")[0] in cases and name not in figures]
    return [
        Figure(name, round(value, 5), *GOALS.get(name, ("", ""))) for name, value in figures.items()
    ] + [Figure(name, None, GOALS[name][0], GOALS[name][1], met=False) for name in missing]
