"""The control case: a Pendulum-v1 policy, compressed to the smallest that keeps its return.

Nothing here is judged on outputs alone: every figure is the *closed-loop* return of the ONNX
file driving gymnasium's ``Pendulum-v1`` through onnxruntime, on seeds no training episode
used. A policy whose torques differ slightly from its teacher's can still swing up and hold,
and one that looks close on a test set can fall over, so the return is the only honest metric.

Pieces, in the order they depend on each other:

- :class:`EnergyLqrExpert`, a classical controller: energy pumping to swing up, a discrete
  LQR (on the env's own semi-implicit Euler step) once near upright.
- :class:`PendulumPolicy`, an MLP ``observation → torque``; the teacher is 3→256→256→1,
  learned from the expert by behaviour cloning with DAgger rounds (the learner's own visited
  states, labelled by the expert, are added to the data), so it also knows how to recover
  from its own mistakes. Weights and data are cached per seed (:func:`default_cache_dir`).
- :class:`PendulumTask`, the :class:`~edgeloop.compressor.task.Task` the search uses.
- :func:`build_control`, a grid over width, depth, structured and unstructured pruning and
  int8 quantization that picks the smallest policy within 5% of the teacher's return.

Determinism: torch trains on one thread with fixed seeds, and episodes are seeded, so a seed
gives the same teacher, the same ONNX bytes and the same returns on every run of one host.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from edgeloop.compressor import evaluate
from edgeloop.compressor.export import BATCH_DIM, export_model
from edgeloop.compressor.passes import OnnxModel, PassContext, get_pass
from edgeloop.compressor.task import ExportSpec, Task
from edgeloop.compressor.training import distill

__all__ = [
    "ENV_ID",
    "EVAL_SEEDS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "RETURN_RATIO_FLOOR",
    "Candidate",
    "EnergyLqrExpert",
    "Episodes",
    "PendulumPolicy",
    "PendulumTask",
    "build_control",
    "default_cache_dir",
    "return_ratio",
    "run_episodes",
]

ENV_ID = "Pendulum-v1"
EPISODE_STEPS = 200
MAX_TORQUE = 2.0
INPUT_NAME = "observation"
OUTPUT_NAME = "action"

EVAL_SEEDS: tuple[int, ...] = tuple(range(50))
"""Seeds of the scoring episodes. 50 rather than the customary 20: returns vary ~3x with the
initial state, and the search picks the smallest of many candidates by a 5% margin, so a
larger paired sample keeps that pick from riding on a lucky start (still ~1 s per score)."""

TRAIN_SEED_BASE = 10_000
"""Training and DAgger episodes reset from seeds at and above this, never an evaluation seed."""

RETURN_RATIO_FLOOR = 0.95
"""``return_ratio`` at or above this is "within 5% of the teacher" (see :func:`return_ratio`)."""

TEACHER_HIDDEN = 256
TEACHER_LAYERS = 2
CACHE_VERSION = 2
"""Part of the cache key: bump it when the expert, the data or the teacher's training change."""


def return_ratio(reference_return: float, candidate_return: float) -> float:
    """``reference / candidate`` for Pendulum's returns, which are never positive.

    A return is minus a cost, so this is the candidate's cost relative to the reference's,
    inverted: 1.0 means as good, 0.95 means the candidate costs 1/0.95 ≈ 5.3% more, and above
    1.0 means better than the reference. The teacher scored against itself gives exactly 1.0.

    Raises:
        ValueError: a positive return (not Pendulum's reward) or a zero candidate return.
    """
    if reference_return > 0 or candidate_return > 0:
        raise ValueError(
            f"returns must be <= 0 for Pendulum (got reference {reference_return}, candidate "
            f"{candidate_return}); return_ratio is defined for costs expressed as negative returns"
        )
    if candidate_return == 0:
        raise ValueError("a candidate return of exactly 0 leaves return_ratio undefined")
    return reference_return / candidate_return


# --- the expert -------------------------------------------------------------------------------

GRAVITY_GAIN = 15.0
"""θ̈ = 3g/(2l)·sin θ + 3/(ml²)·u in gymnasium's pendulum (g=10, m=l=1): 15 sin θ + 3u."""
TORQUE_GAIN = 3.0
STEP_SECONDS = 0.05


@dataclass(frozen=True)
class EnergyLqrExpert:
    """Energy-pumping swing-up plus a discrete LQR near upright, vectorized over states.

    With E = ½θ̇² + 15 cos θ, dE/dt = 3uθ̇, so pushing along θ̇ in proportion to the energy
    deficit (15 at upright rest) pumps the pendulum up without overshooting far; the LQR, solved
    on the env's own semi-implicit Euler step and reward weights (θ², 0.1θ̇², 0.001u²), takes
    over inside ``capture_angle``. Measured on seeds 0..19: about -137.5, against -1197 for zero
    torque; ``energy_gain`` from 0.3 to 3 and ``capture_angle`` from 0.6 to 1.0 change that by
    under 1%.
    """

    energy_gain: float = 1.0
    capture_angle: float = 0.6
    lqr_gain: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        # scipy comes with scikit-learn (a compressor dependency); its Riccati solver is the
        # well-kept way to get the gain rather than iterating by hand.
        from scipy.linalg import solve_discrete_are

        dt = STEP_SECONDS
        a = np.array([[1 + GRAVITY_GAIN * dt * dt, dt], [GRAVITY_GAIN * dt, 1.0]])
        b = np.array([[TORQUE_GAIN * dt * dt], [TORQUE_GAIN * dt]])
        q, r = np.diag([1.0, 0.1]), np.array([[0.001]])
        p = solve_discrete_are(a, b, q, r)
        gain = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
        object.__setattr__(self, "lqr_gain", (float(gain[0, 0]), float(gain[0, 1])))

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        """Torques ``[n, 1]`` in [-2, 2] for observations ``[n, 3]`` = (cos θ, sin θ, θ̇)."""
        cos, sin, velocity = observation[:, 0], observation[:, 1], observation[:, 2]
        angle = np.arctan2(sin, cos)
        energy = 0.5 * velocity**2 + GRAVITY_GAIN * cos
        swing = self.energy_gain * (GRAVITY_GAIN - energy) * velocity
        hold = -(self.lqr_gain[0] * angle + self.lqr_gain[1] * velocity)
        torque = np.where(np.abs(angle) < self.capture_angle, hold, swing)
        return np.clip(torque, -MAX_TORQUE, MAX_TORQUE).astype(np.float32)[:, np.newaxis]


# --- episodes ---------------------------------------------------------------------------------

Policy = Callable[[np.ndarray], np.ndarray]
"""``observations [n, 3] float32 → torques [n, 1]``, one row per running episode."""


@dataclass(frozen=True)
class Episodes:
    returns: np.ndarray
    """``[episodes]``: the sum of the env's own rewards over :data:`EPISODE_STEPS` steps."""
    observations: np.ndarray
    """``[episodes, steps, 3]``: what the policy saw before each step."""


def run_episodes(
    policy: Policy,
    seeds: Sequence[int],
    *,
    action_noise: float = 0.0,
    noise_seed: int = 0,
) -> Episodes:
    """Run one ``Pendulum-v1`` episode per seed, all in lockstep, with ``policy`` acting.

    Lockstep lets a torch policy act on every episode in one batch; an ONNX policy that must
    run at batch 1, as on a device, loops inside ``policy`` (see :meth:`PendulumTask.score`).
    ``action_noise`` (std of Gaussian torque noise) pushes data-collection episodes off the
    policy's own path; evaluation uses none.
    """
    envs = [gym.make(ENV_ID, max_episode_steps=EPISODE_STEPS) for _ in seeds]
    observations = np.stack(
        [env.reset(seed=int(seed))[0] for env, seed in zip(envs, seeds, strict=True)]
    )
    noise = np.random.default_rng(noise_seed)
    returns = np.zeros(len(envs))
    seen = np.empty((len(envs), EPISODE_STEPS, 3), dtype=np.float32)
    for step in range(EPISODE_STEPS):
        seen[:, step] = observations
        torques = np.asarray(policy(observations), dtype=np.float32).reshape(len(envs), 1)
        if action_noise > 0:
            torques = torques + noise.normal(0.0, action_noise, torques.shape).astype(np.float32)
        for i, env in enumerate(envs):
            observation, reward, _, _, _ = env.step(np.clip(torques[i], -MAX_TORQUE, MAX_TORQUE))
            observations[i] = observation
            returns[i] += float(reward)
    for env in envs:
        env.close()
    return Episodes(returns, seen)


def onnx_policy(model_path: Path, threads: int = 1) -> Policy:
    """An ONNX policy called once per observation at batch 1, as a device controller would."""
    session = evaluate.session(model_path, threads)
    input_name = session.get_inputs()[0].name

    def act(observations: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [session.run(None, {input_name: row[np.newaxis]})[0] for row in observations]
        )

    return act


# --- the policy network -----------------------------------------------------------------------


class PendulumPolicy(nn.Module):
    """MLP ``observation [batch, 3] → torque [batch, 1]``, output squashed into [-2, 2].

    It takes the env's raw observation: scaling θ̇ (range ±8) inside the model would add a Mul
    in front of the first Gemm that static QDQ quantizes per channel into a graph onnxruntime
    refuses to run, and Adam trains fine without it. ``hidden`` units in each of ``layers``
    ReLU layers; the teacher is 256 x 2.
    """

    def __init__(self, hidden: int = TEACHER_HIDDEN, layers: int = TEACHER_LAYERS) -> None:
        super().__init__()
        if hidden < 1 or layers < 1:
            raise ValueError(f"a policy needs hidden >= 1 and layers >= 1, got {hidden}, {layers}")
        blocks: list[nn.Module] = []
        width_in = 3
        for _ in range(layers):
            blocks += [nn.Linear(width_in, hidden), nn.ReLU()]
            width_in = hidden
        blocks.append(nn.Linear(width_in, 1))
        self.layers = nn.Sequential(*blocks)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        return MAX_TORQUE * torch.tanh(self.layers(observation))


def torch_policy(model: nn.Module) -> Policy:
    def act(observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(observations)).numpy()

    return act


@contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one torch thread: summation order changes the weights across thread counts."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(
    model: nn.Module,
    states: np.ndarray,
    torques: np.ndarray,
    *,
    epochs: int,
    seed: int,
    lr: float = 2e-3,
    batch_size: int = 512,
) -> None:
    """Behaviour cloning: MSE to the expert's torque on each state (Adam, seeded shuffles)."""
    inputs, targets = torch.from_numpy(states), torch.from_numpy(torques)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=shuffle).split(batch_size):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
        scheduler.step()
    model.eval()


def _observations(angle: np.ndarray, velocity: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle), velocity], axis=1).astype(np.float32)


def _jitter(observations: np.ndarray, rng: np.random.Generator, copies: int) -> np.ndarray:
    """Nearby states (θ ± 0.1 rad, θ̇ ± 0.3 rad/s), so the data covers a tube, not a line."""
    angle = np.arctan2(observations[:, 1], observations[:, 0])
    velocity = observations[:, 2]
    out = []
    for _ in range(copies):
        out.append(
            _observations(
                angle + rng.normal(0, 0.1, angle.shape),
                np.clip(velocity + rng.normal(0, 0.3, velocity.shape), -8, 8),
            )
        )
    return np.concatenate(out)


def train_teacher(
    seed: int,
    *,
    expert: EnergyLqrExpert | None = None,
    epochs: int = 20,
    dagger_rounds: int = 2,
    dagger_epochs: int = 10,
    episodes_per_round: int = 40,
    progress: bool = False,
) -> tuple[PendulumPolicy, np.ndarray, np.ndarray]:
    """Behaviour cloning plus DAgger; returns ``(teacher, states, expert torques)``.

    The data starts from uniform states over the whole (θ, θ̇) box and the expert's own
    episodes with and without torque noise; each DAgger round adds the states the current
    learner visits (labelled by the expert), since plain cloning only sees the expert's path
    and a learner that leaves it has never been shown the way back. The state space is 2-D,
    so ~100k states cover it densely and one round's training takes seconds.
    """
    expert = expert or EnergyLqrExpert()
    rng = np.random.default_rng(seed)
    with _one_thread():
        torch.manual_seed(seed)
        uniform = _observations(rng.uniform(-np.pi, np.pi, 20_000), rng.uniform(-8, 8, 20_000))
        seeds = [TRAIN_SEED_BASE + seed * 1000 + i for i in range(episodes_per_round)]
        clean = run_episodes(expert, seeds).observations.reshape(-1, 3)
        noisy = run_episodes(expert, seeds, action_noise=0.7, noise_seed=seed).observations
        visited = np.concatenate([clean, noisy.reshape(-1, 3)])
        states = np.concatenate([uniform, visited, _jitter(visited, rng, 1)])
        model = PendulumPolicy()
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("training the pendulum teacher", total=dagger_rounds + 1)
            _fit(model, states, expert(states), epochs=epochs, seed=seed)
            bar.advance(task)
            for round_index in range(dagger_rounds):
                base = TRAIN_SEED_BASE + seed * 1000 + (round_index + 1) * episodes_per_round
                round_seeds = list(range(base, base + episodes_per_round))
                learner = torch_policy(model)
                own = run_episodes(learner, round_seeds).observations.reshape(-1, 3)
                shaken = run_episodes(
                    learner, round_seeds, action_noise=0.5, noise_seed=seed + round_index
                ).observations.reshape(-1, 3)
                states = np.concatenate([states, own, shaken])
                _fit(
                    model,
                    states,
                    expert(states),
                    epochs=dagger_epochs,
                    seed=seed + round_index + 1,
                    lr=5e-4,
                )
                bar.advance(task)
    return model, states, expert(states)


def default_cache_dir() -> Path:
    """``$EDGELOOP_CACHE`` or ``~/.cache/edgeloop``: where trained teachers are kept."""
    return Path(os.environ.get("EDGELOOP_CACHE", Path.home() / ".cache" / "edgeloop"))


# --- the task ---------------------------------------------------------------------------------


class PendulumTask(Task):
    """Pendulum-v1 swing-up; metric = mean closed-loop return of the ONNX policy.

    ``score`` adds ``return_std``, ``return_min`` and ``return_ratio`` (against the teacher's
    own exported ONNX on the same seeds, see :func:`return_ratio`).
    """

    name = "control"
    kind = "regression"
    metric = "return_mean"
    higher_is_better = True

    def __init__(
        self,
        *,
        seed: int = 0,
        cache_dir: Path | None = None,
        eval_seeds: Sequence[int] = EVAL_SEEDS,
        teacher_epochs: int = 20,
        dagger_rounds: int = 2,
        progress: bool = False,
    ) -> None:
        """``teacher_epochs`` and ``dagger_rounds`` exist so tests can train a rough teacher in
        seconds; both are part of the cache key."""
        if set(eval_seeds) & set(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + 1_000_000)):
            raise ValueError(f"evaluation seeds must be below {TRAIN_SEED_BASE} (training seeds)")
        self.seed = seed
        self.cache_dir = (cache_dir or default_cache_dir()) / "pendulum"
        self.eval_seeds = tuple(eval_seeds)
        self.teacher_epochs, self.dagger_rounds = teacher_epochs, dagger_rounds
        self.progress = progress
        self.expert = EnergyLqrExpert()
        self._teacher: PendulumPolicy | None = None
        self._states: np.ndarray | None = None
        self._torques: np.ndarray | None = None
        self._reference_return: float | None = None

    @property
    def _cache_file(self) -> Path:
        return self.cache_dir / (
            f"teacher-v{CACHE_VERSION}-seed{self.seed}"
            f"-e{self.teacher_epochs}-d{self.dagger_rounds}.pt"
        )

    def _load(self) -> None:
        if self._teacher is not None:
            return
        if self._cache_file.exists():
            saved = torch.load(self._cache_file, weights_only=True)
            model = PendulumPolicy()
            model.load_state_dict(saved["state_dict"])
            self._teacher = model.eval()
            self._states, self._torques = saved["states"].numpy(), saved["torques"].numpy()
            return
        model, states, torques = train_teacher(
            self.seed,
            expert=self.expert,
            epochs=self.teacher_epochs,
            dagger_rounds=self.dagger_rounds,
            progress=self.progress,
        )
        self._teacher, self._states, self._torques = model, states, torques
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        scratch = self._cache_file.with_suffix(".tmp")
        torch.save(
            {
                "state_dict": model.state_dict(),
                "states": torch.from_numpy(states),
                "torques": torch.from_numpy(torques),
            },
            scratch,
        )
        os.replace(scratch, self._cache_file)

    def teacher(self) -> PendulumPolicy:
        self._load()
        assert self._teacher is not None
        return self._teacher

    def export_spec(self) -> ExportSpec:
        return ExportSpec(
            example_inputs=(torch.from_numpy(self.latency_feed()[INPUT_NAME]),),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
        )

    def train_inputs(self) -> tuple[torch.Tensor, ...]:
        """The teacher's training states: the uniform box, expert and DAgger episodes."""
        self._load()
        assert self._states is not None
        return (torch.from_numpy(self._states),)

    def train_targets(self) -> torch.Tensor:
        """The expert's torque ``[n, 1]`` on each training state."""
        self._load()
        assert self._torques is not None
        return torch.from_numpy(self._torques)

    def student(self, width: float, layers: int = TEACHER_LAYERS) -> PendulumPolicy:
        """A fresh policy with ``round(256 * width)`` units (at least 1) in ``layers`` layers."""
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        torch.manual_seed(self.seed)
        return PendulumPolicy(max(1, round(TEACHER_HIDDEN * width)), layers)

    def episode_returns(self, model_path: Path, threads: int = 1) -> np.ndarray:
        """Returns of the ONNX policy on :attr:`eval_seeds`, acting at batch 1."""
        return run_episodes(onnx_policy(model_path, threads), self.eval_seeds).returns

    def reference_return(self) -> float:
        """Mean return of the teacher's own ONNX export (the ``return_ratio`` reference)."""
        if self._reference_return is None:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="edgeloop-pendulum-") as scratch:
                path = export_model(self.teacher(), self.export_spec(), Path(scratch) / "t.onnx")
                self._reference_return = float(self.episode_returns(path).mean())
        return self._reference_return

    def score(self, model_path: Path, threads: int = 1) -> dict[str, float]:
        returns = self.episode_returns(model_path, threads)
        mean = float(returns.mean())
        return {
            "return_mean": mean,
            "return_std": float(returns.std()),
            "return_min": float(returns.min()),
            "return_ratio": return_ratio(self.reference_return(), mean),
        }

    def latency_feed(self) -> dict[str, np.ndarray]:
        """One observation: 30° from upright, turning at 1 rad/s."""
        return {INPUT_NAME: _observations(np.array([np.pi / 6]), np.array([1.0]))}


# --- compression grid -------------------------------------------------------------------------


@dataclass
class Candidate:
    """One compressed policy: how it was made, and what it measured."""

    label: str
    width: float
    layers: int
    hidden: list[int]
    prune: str
    quant: str
    path: Path
    size_bytes: int = 0
    return_mean: float = 0.0
    return_std: float = 0.0
    return_ratio: float = 0.0
    latency_p50_ms: float = 0.0
    parameters: int = 0

    def row(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def _hidden_widths(model: nn.Module) -> list[int]:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [m.out_features for m in linears[:-1]]


def prune_structured(model: PendulumPolicy, ratio: float) -> PendulumPolicy:
    """Remove ``ratio`` of each hidden layer's units by L2 magnitude (torch-pruning), which
    shrinks the matrices themselves, unlike masking. The output layer keeps its one unit."""
    import copy

    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    linears = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    pruner = tp.pruner.MetaPruner(
        pruned,
        torch.zeros(1, 3),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[linears[-1]],
    )
    pruner.step()
    return pruned


def prune_unstructured(model: PendulumPolicy, amount: float) -> PendulumPolicy:
    """Zero the ``amount`` smallest weights of every layer; masks stay on for fine-tuning, so
    call :func:`_freeze_masks` afterwards. The ONNX file stays as large (dense zeros)."""
    import copy

    from torch.nn.utils import prune

    pruned = copy.deepcopy(model)
    for module in pruned.modules():
        if isinstance(module, nn.Linear):
            prune.l1_unstructured(module, "weight", amount=amount)
    return pruned


def _freeze_masks(model: nn.Module) -> None:
    from torch.nn.utils import prune

    for module in model.modules():
        if isinstance(module, nn.Linear) and prune.is_pruned(module):
            prune.remove(module, "weight")


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization warns on the root logger, once per call, to pre-process first;
    forty copies of that would bury the build's own output."""
    import logging

    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(before)


def build_control(
    out_dir: Path,
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
    widths: Sequence[float] = (0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625),
    shallow_widths: Sequence[float] = (0.25, 0.0625),
    structured_ratios: Sequence[float] = (0.5, 0.875, 0.96875),
    unstructured_amounts: Sequence[float] = (0.5, 0.9),
    distill_epochs: int = 20,
    progress: bool = True,
) -> dict[str, Any]:
    """Compress the teacher over a grid and pick the smallest policy that keeps its return.

    fp32 candidates: the teacher; students distilled at each width (2 layers, and 1 layer for
    ``shallow_widths``); the teacher with hidden units removed (structured) or weights zeroed
    (unstructured), each fine-tuned by distillation. Each fp32 candidate is also quantized:
    int8 dynamic on MatMul/Gemm (per channel) and static QDQ int8. Every file is scored in the
    env on :data:`EVAL_SEEDS` and timed at batch 1 on one onnxruntime thread (all models
    interleaved, so host drift hits them alike).

    Chosen: the smallest file with ``return_ratio >= RETURN_RATIO_FLOOR`` (ties: higher return).
    Baseline: what a user would do first, ``quantize_dynamic`` with defaults on the teacher.

    Writes ``out_dir/<label>/model.onnx`` per candidate and ``out_dir/control.json``; returns
    the same summary (teacher, expert, candidates, chosen, baseline, figures, seconds).
    """
    started = time.perf_counter()
    task = PendulumTask(seed=seed, cache_dir=cache_dir, progress=progress)
    teacher = task.teacher()
    inputs, targets = task.train_inputs(), task.train_targets()
    spec = task.export_spec()

    def distilled(student: nn.Module, epochs: int) -> nn.Module:
        with _one_thread():
            return distill(
                student,
                teacher,
                inputs,
                kind="regression",
                targets=targets,
                epochs=epochs,
                lr=3e-3,
                batch_size=512,
                alpha=0.5,
                seed=seed,
            )

    fp32: list[tuple[str, float, int, str, Callable[[], nn.Module]]] = [
        ("teacher", 1.0, TEACHER_LAYERS, "none", lambda: teacher)
    ]
    for width in widths:
        fp32.append(
            (
                f"w{width:g}-l2",
                width,
                2,
                "none",
                lambda w=width: distilled(task.student(w, 2), distill_epochs),
            )
        )
    for width in shallow_widths:
        fp32.append(
            (
                f"w{width:g}-l1",
                width,
                1,
                "none",
                lambda w=width: distilled(task.student(w, 1), distill_epochs),
            )
        )
    for ratio in structured_ratios:
        fp32.append(
            (
                f"teacher-struct{ratio:g}",
                1 - ratio,
                2,
                f"structured {ratio:g}",
                lambda r=ratio: distilled(prune_structured(teacher, r), distill_epochs // 2),
            )
        )

    def unstructured(amount: float) -> nn.Module:
        model = distilled(prune_unstructured(teacher, amount), distill_epochs // 2)
        _freeze_masks(model)
        return model

    for amount in unstructured_amounts:
        fp32.append(
            (
                f"teacher-unstruct{amount:g}",
                1.0,
                2,
                f"unstructured {amount:g}",
                lambda a=amount: unstructured(a),
            )
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    export_pass = get_pass("export")()
    dynamic_pass, static_pass = get_pass("quantize_dynamic")(), get_pass("quantize_static")()
    candidates: list[Candidate] = []
    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task("control: building candidates", total=len(fp32))
        for label, width, layers, prune, make in fp32:
            model = make()
            path = out_dir / label / "model.onnx"
            export_model(model, spec, path)
            source = OnnxModel(path)
            hidden = _hidden_widths(model)
            parameters = sum(int((p != 0).sum()) for p in model.parameters())
            candidates.append(
                Candidate(label, width, layers, hidden, prune, "fp32", path, parameters=parameters)
            )
            for quant, quant_pass, config in (
                ("int8-dynamic", dynamic_pass, dynamic_pass.config({})),
                ("int8-static-qdq", static_pass, static_pass.config({})),
            ):
                work = out_dir / f"{label}-{quant}"
                work.mkdir(parents=True, exist_ok=True)
                ctx = PassContext(task=task, work_dir=work, seed=seed)
                with _quiet_root_logger():
                    quantized = quant_pass.run(source, config, ctx)
                candidates.append(
                    Candidate(
                        f"{label}-{quant}",
                        width,
                        layers,
                        hidden,
                        prune,
                        quant,
                        quantized.path,
                        parameters=parameters,
                    )
                )
            bar.advance(job)
        del export_pass

        baseline_path = out_dir / "baseline-quantize-dynamic-defaults" / "model.onnx"
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        from onnxruntime.quantization import quantize_dynamic

        with _quiet_root_logger():
            quantize_dynamic(str(candidates[0].path), str(baseline_path))
        baseline = Candidate(
            "baseline-quantize-dynamic-defaults",
            1.0,
            TEACHER_LAYERS,
            candidates[0].hidden,
            "none",
            "int8-dynamic-defaults",
            baseline_path,
            parameters=candidates[0].parameters,
        )

        everything = [*candidates, baseline]
        job = bar.add_task("control: scoring in the env", total=len(everything))
        for candidate in everything:
            scores = task.score(candidate.path)
            candidate.size_bytes = candidate.path.stat().st_size
            candidate.return_mean = scores["return_mean"]
            candidate.return_std = scores["return_std"]
            candidate.return_ratio = scores["return_ratio"]
            bar.advance(job)
    latencies = evaluate.compare_latency(
        {c.label: c.path for c in everything},
        task.latency_feed(),
        threads=1,
        calls=300,
        seed=seed,
    )
    for candidate in everything:
        candidate.latency_p50_ms = latencies[candidate.label][0]

    teacher_candidate = candidates[0]
    eligible = [c for c in candidates if c.return_ratio >= RETURN_RATIO_FLOOR]
    chosen = min(eligible, key=lambda c: (c.size_bytes, -c.return_mean))
    expert_returns = run_episodes(task.expert, task.eval_seeds).returns
    summary: dict[str, Any] = {
        "env": ENV_ID,
        "eval_seeds": [task.eval_seeds[0], task.eval_seeds[-1]],
        "expert_return_mean": float(expert_returns.mean()),
        "expert_return_mean_seeds_0_19": float(run_episodes(task.expert, range(20)).returns.mean()),
        "teacher": teacher_candidate.row(),
        "candidates": [c.row() for c in candidates],
        "chosen": chosen.row(),
        "baseline": baseline.row(),
        "figures": {
            "control.return_ratio": chosen.return_ratio,
            "control.size_ratio": teacher_candidate.size_bytes / chosen.size_bytes,
            "control.baseline_size_ratio": teacher_candidate.size_bytes / baseline.size_bytes,
            "control.baseline_metric": baseline.return_mean,
            "control.baseline_return_ratio": baseline.return_ratio,
        },
    }
    summary["seconds"] = time.perf_counter() - started
    (out_dir / "control.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
