"""The Episode record: one record used by memory, trainer, evaluation and the server (DESIGN §3).

Per turn: the prompt material, the raw model text, parsed actions, ``cells``, ``action_targets``,
reward components (env, format, world_model, shaping), metrics and frames. Per episode: env name,
config, seed, level hash, ``group_id``, outcome and memory version. The trainer adds token-level
fields (``tokens``): prompt ids, response ids as generated, loss mask, turn-end positions.

``to_dict``/``from_dict`` give a JSON-native form (frames are kept out of it: they go to PNGs or
the env can re-render them from the seed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

REWARD_KEYS = ("env", "format", "world_model", "shaping")
OUTCOMES = ("success", "failure", "truncated", "running")


@dataclass
class Turn:
    prompt_text: str
    response_text: str = ""
    actions: list[str] = field(default_factory=list)
    cells: list[list[int]] = field(default_factory=list)  # first element: the cell before the turn
    action_targets: list[list[int]] = field(default_factory=list)
    rewards: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REWARD_KEYS, 0.0))
    metrics: dict[str, bool] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # state after the turn
    terminated: bool = False
    truncated: bool = False
    failure: str | None = None
    # info["events"]: the failure and irreversible events of the turn's primitive actions (docs/memory.md)
    events: list[dict[str, Any]] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list, repr=False)  # observation images shown

    @property
    def reward(self) -> float:
        return float(sum(self.rewards.values()))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("frames")
        d["n_frames"] = len(self.frames)
        return d


@dataclass
class Episode:
    env_name: str
    seed: int | None
    level_hash: str
    env_config: dict[str, Any] = field(default_factory=dict)
    group_id: str = ""
    memory_version: int = -1
    start_state: dict[str, Any] = field(default_factory=dict)
    start_cell: list[int] = field(default_factory=list)
    heuristics: dict[str, Any] = field(default_factory=dict)  # env.grid_heuristics() at reset (for memory)
    turns: list[Turn] = field(default_factory=list)
    outcome: str = "running"  # success | failure | truncated | running
    failure_kind: str | None = None  # e.g. hole, deadlock, format_invalid, max_turns
    tokens: dict[str, Any] = field(default_factory=dict)  # filled by the trainer

    @property
    def success(self) -> bool:
        return self.outcome == "success"

    @property
    def total_reward(self) -> float:
        return float(sum(t.reward for t in self.turns))

    @property
    def n_turns(self) -> int:
        return len(self.turns)

    def cells(self) -> list[list[int]]:
        """Every state cell visited, in order, starting with the start cell."""
        out = [list(self.start_cell)] if self.start_cell else []
        for t in self.turns:
            out.extend(t.cells[1:] if t.cells else [])
        return out

    def format_valid_rate(self) -> float:
        if not self.turns:
            return 0.0
        return float(np.mean([bool(t.metrics.get("format_valid", False)) for t in self.turns]))

    def finish(self, outcome: str, failure_kind: str | None = None) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r}; accepted: {OUTCOMES}")
        self.outcome, self.failure_kind = outcome, failure_kind

    def summary_record(self) -> dict[str, Any]:
        """What evaluation writes per episode (and ``runs.summarize_episodes`` reads)."""
        return {
            "env": self.env_name,
            "seed": self.seed,
            "level_hash": self.level_hash,
            "success": self.success,
            "outcome": self.outcome,
            "finish_reason": self.failure_kind or self.outcome,
            "turns": self.n_turns,
            "reward": self.total_reward,
            "format_valid_rate": self.format_valid_rate(),
        }

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("turns", "tokens")}
        d["turns"] = [t.to_dict() for t in self.turns]
        d["tokens"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.tokens.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Episode:
        d = dict(d)
        turns = []
        for t in d.pop("turns", []):
            t = dict(t)
            t.pop("n_frames", None)
            turns.append(Turn(**t))
        return cls(**d, turns=turns)
