"""The environment contract (DESIGN §3) and the shared multi-turn text-action machinery.

A concrete env subclasses :class:`AtlasEnv` and implements a small set of hooks (level
generation, one primitive action, state, rendering, relations, heuristics, solver). The base
class owns everything that must be identical across envs: parsing the model's raw text with
:mod:`atlasva.formats`, executing actions until the first invalid one, the reward components,
the ``info`` dict, the observation dict and the gymnasium spaces.
"""

from __future__ import annotations

import hashlib
import string
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from atlasva import formats

OBS_MODES = ("vision", "text", "both")
IMAGE_PLACEHOLDER = formats.IMAGE_PLACEHOLDER
#: Characters any env may write into ``obs["text"]`` (ASCII printable plus grid symbols).
TEXT_CHARSET = frozenset(string.printable) | frozenset("√×·→←↑↓")
MAX_OBS_CHARS = 16384


class LimitError(ValueError):
    """A config value or a given level is over a resource bound the env declares in ``limits``.

    ``key`` names the config key (or ``"options.level"``, ``"image_pixels"``), ``limit`` the largest
    accepted value; the env server turns it into a 4xx naming both.
    """

    def __init__(self, env: str, key: str, value: Any, limit: int, unit: str = "") -> None:
        unit = f" {unit}" if unit else ""
        super().__init__(f"{env}: {key}={value} is over the limit of {limit}{unit} (see {env} limits[{key!r}])")
        self.env, self.key, self.value, self.limit = env, key, value, limit


class NoSolverError(NotImplementedError):
    """The env cannot give a whole optimal plan (e.g. stochastic transitions); ask ``optimal_action()``."""


def level_hash(rows: list[str] | str) -> str:
    """Content hash of a level, stable across processes (never Python's ``hash()``)."""
    text = rows if isinstance(rows, str) else "\n".join(rows)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def json_native(x: Any) -> Any:
    """Convert numpy scalars/arrays and tuples into JSON-native values, recursively."""
    if isinstance(x, dict):
        return {str(k): json_native(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_native(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_native(x.tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


class AtlasEnv(gym.Env, ABC):
    """Base class of every atlasva environment.

    Subclasses set ``env_name``, ``action_sep``, ``grid_shape`` and ``image_shape`` (in
    ``__init__``) and implement the abstract hooks. ``step`` receives the model's raw text.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}
    env_name: ClassVar[str] = "env"
    action_sep: ClassVar[str] = ","
    #: Legal action names, as shown to the model (grid envs); parametric envs may leave it empty.
    action_names: ClassVar[tuple[str, ...]] = ()
    #: Resource bounds (inclusive maxima) by config key, enforced at construction so a config can never
    #: make an env allocate without bound. ``image_pixels``: H×W of one frame; ``options.level``: rows
    #: and columns of a level given to ``reset``. Subclasses extend it next to their config.
    limits: ClassVar[Mapping[str, int]] = {"max_actions_per_turn": 32, "image_pixels": 1024 * 1024, "options.level": 64}

    def __init__(
        self,
        *,
        obs_mode: str = "vision",
        format: str = "free_think",
        max_actions_per_turn: int = 3,
        format_reward: float = 0.1,
        format_penalty: float = 0.0,
        world_model_weight: float = 0.5,
        strict_format: bool = False,
        max_turns: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode={obs_mode!r} is not accepted; use one of {OBS_MODES}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}; accepted: {self.metadata['render_modes']} or None")
        if int(max_actions_per_turn) < 1:
            raise ValueError(f"max_actions_per_turn must be >= 1, got {max_actions_per_turn}")
        self.check_limit("max_actions_per_turn", max_actions_per_turn)
        if max_turns is not None and int(max_turns) < 1:
            raise ValueError(f"max_turns must be >= 1 or None, got {max_turns}")
        self.obs_mode = obs_mode
        self.format = formats.check_format(format)
        self.max_actions_per_turn = int(max_actions_per_turn)
        self.format_reward = float(format_reward)
        self.format_penalty = float(format_penalty)
        self.world_model_weight = float(world_model_weight)
        self.strict_format = bool(strict_format)
        self.max_turns = None if max_turns is None else int(max_turns)
        self.render_mode = render_mode
        self.turn = 0
        self._ready = False
        self._events: list[dict[str, Any]] = []  # events of the primitive actions of the current step
        self._primitive = 0

    # ------------------------------------------------------------------ limits
    def check_limit(self, key: str, value: Any, unit: str = "") -> None:
        """Raise :class:`LimitError` if ``value`` (a number, or a sequence checked element-wise) is over
        ``limits[key]``. Call it before allocating anything that grows with ``value``."""
        limit = self.limits.get(key)
        if limit is None:
            return
        values = value if isinstance(value, list | tuple) else (value,)
        if any(float(v) > limit for v in values):
            raise LimitError(self.env_name, key, list(value) if isinstance(value, tuple) else value, limit, unit)

    def check_image_shape(self, height: int, width: int) -> None:
        """Frames of ``height``×``width`` pixels must fit ``limits["image_pixels"]``."""
        limit = self.limits["image_pixels"]
        if int(height) * int(width) > limit:
            raise LimitError(self.env_name, "image_pixels", f"{int(height) * int(width)} ({height}x{width})", limit, "pixels")

    def frame_pixels(self) -> int:
        """Pixels of the images one observation carries (0 in text mode): what a server budgets."""
        if self.obs_mode == "text":
            return 0
        h, w = self.image_shape[:2]
        return int(h) * int(w)

    # ------------------------------------------------------------------ spaces
    def _build_spaces(self) -> None:
        """Call at the end of a subclass ``__init__`` once ``image_shape`` is known."""
        h, w, _ = self.image_shape
        self.check_image_shape(h, w)
        self.observation_space = spaces.Dict(
            {
                "text": spaces.Text(max_length=MAX_OBS_CHARS, min_length=0, charset="".join(sorted(TEXT_CHARSET))),
                "images": spaces.Sequence(spaces.Box(0, 255, (h, w, 3), np.uint8), stack=False),
            }
        )
        self.action_space = spaces.Text(
            max_length=formats.MAX_TEXT_CHARS, min_length=0, charset="".join(sorted(set(string.printable)))
        )

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def _generate(self, seed: int) -> None:
        """Create the level for ``seed`` (deterministic in any process) and set the start state."""

    @abstractmethod
    def _load_level(self, rows: list[str]) -> None:
        """Set up a level given in the env's text symbols."""

    @abstractmethod
    def level_rows(self) -> list[str]:
        """The level (start layout) in text symbols: the input of ``level_hash``."""

    @abstractmethod
    def _canonical_action(self, token: str) -> str | None:
        """The legal action a raw token names, or None if it names none."""

    @abstractmethod
    def _execute(self, action: str) -> tuple[bool, float, bool]:
        """Apply one legal primitive action: (effective, env reward, terminated)."""

    @abstractmethod
    def cell(self) -> list[int]:
        """The current state cell ``[row, col]``."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-native structured state."""

    @abstractmethod
    def relations(self, state: dict[str, Any]) -> list[list[str]]:
        """Relation triples that are true in ``state`` (world-model reward ground truth)."""

    relation_vocabulary: ClassVar[formats.Vocabulary] = formats.Vocabulary((), (), ())

    @abstractmethod
    def render_rgb(self) -> np.ndarray:
        """uint8 H×W×3 frame of the current state."""

    @abstractmethod
    def render_text(self) -> str:
        """Text rendering of the current state (only TEXT_CHARSET characters)."""

    @abstractmethod
    def grid_heuristics(self) -> dict[str, Any]:
        """{"shape", "hazard", "goals", "goal_distance", ...extras} for the current level."""

    @abstractmethod
    def is_success(self) -> bool: ...

    def failure(self) -> str | None:
        """Name of the terminal failure the current state is in (e.g. "hole"), else None."""
        return None

    def task_text(self) -> str:
        return ""

    def rules_text(self) -> str:
        return ""

    def action_targets(self) -> list[list[int]]:
        return []

    def _event(self, kind: str, cell: list[int], **fields: Any) -> None:
        """Report a failure or irreversible event of the primitive action being executed (call from
        ``_execute``): it reaches ``info["events"]`` as ``{"kind", "step", "cell", **fields}`` with
        ``step`` = the action's index in this turn (``info["cells"][step + 1]`` is the cell after it)."""
        self._events.append({"kind": kind, "step": self._primitive, "cell": list(cell), **fields})

    # ------------------------------------------------------------------ prompt
    def system_prompt(self) -> str:
        parts = [self.rules_text()]
        if self.action_names:
            parts.append("Actions: " + ", ".join(self.action_names) + ".")
        parts.append(formats.instructions(self.format, self.action_sep, self.max_actions_per_turn))
        if formats.has_field(self.format, "observation") or formats.has_field(self.format, "prediction"):
            v = self.relation_vocabulary
            example = [[v.subjects[0], r, v.objects[0]] for r in v.relations[:2]] if v.subjects else []
            parts.append(
                "Describe states as relations between objects, one per sentence"
                + (f', e.g. "{formats.describe(example)}"' if example else "")
                + (f" Relations: {', '.join(v.relations)}." if v.relations else "")
            )
        return "\n".join(p for p in parts if p)

    def _observation(self, header: str) -> dict[str, Any]:
        images: tuple[np.ndarray, ...] = ()
        if self.obs_mode == "text":
            body = self.render_text()
        elif self.obs_mode == "vision":
            body, images = IMAGE_PLACEHOLDER, (self.render_rgb(),)
        else:
            body, images = IMAGE_PLACEHOLDER + "\n" + self.render_text(), (self.render_rgb(),)
        text = f"{header}\n{body}\nDecide your next action(s)." if header else body
        return {"text": text, "images": images}

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "level" in options:
            rows = options["level"]
            if isinstance(rows, str):
                rows = rows.splitlines()
            if not isinstance(rows, list | tuple) or not all(isinstance(r, str) for r in rows):
                raise ValueError("options['level'] must be a list of strings (one per row) or a newline-joined string")
            cols = max((len(r.strip()) for r in rows), default=0)
            if max(len(rows), cols) > self.limits["options.level"]:  # before parsing: a level is user input
                raise LimitError(self.env_name, "options.level", f"{len(rows)}x{cols}", self.limits["options.level"],
                                 "rows or columns")
            self._load_level([r for r in rows if r.strip()])
            self.seed_used: int | None = None
        else:
            level_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
            self.seed_used = level_seed
            self._generate(level_seed)
        self.turn = 0
        self._ready = True
        self._level_hash = level_hash(self.level_rows())
        header = self.task_text()
        header = (header + "\n" if header else "") + "The initial observation is:"
        info = {
            "state": json_native(self.state()),
            "cells": [json_native(self.cell())],
            "action_targets": [],
            "level_hash": self._level_hash,
            "seed": self.seed_used,
            # what the memory may know without learning; in the reset info so every pool carries it
            "heuristics": json_native(self.grid_heuristics()),
        }
        return self._observation(header), info

    def step(self, action: Any):
        """Run the model's raw text. ``info`` holds ``reward_components``, ``metrics``, ``state``, ``cells``,
        ``action_targets``, ``actions`` (executed), ``events``, ``parse_error``, ``failure``, ``level_hash``,
        ``turn``. ``events``: failure and irreversible events of this turn's primitive actions, each
        ``{"kind", "step", "cell", ...}`` (docs/memory.md lists the kinds and their fields)."""
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.step() called before reset() (or after the episode ended)")
        parsed = formats.parse(
            action,
            self.format,
            action_sep=self.action_sep,
            max_actions=self.max_actions_per_turn,
            strict=self.strict_format,
        )
        pre_state = self.state()
        cells = [self.cell()]
        executed: list[str] = []
        action_valid = bool(parsed.actions)
        effective = False
        env_reward = 0.0
        terminated = False
        self._events = []
        for token in parsed.actions:
            act = self._canonical_action(token)
            if act is None:
                action_valid = False  # execution stops at the first invalid action
                break
            self._primitive = len(executed)
            eff, r, term = self._execute(act)
            executed.append(act)
            effective |= bool(eff)
            env_reward += float(r)
            cells.append(self.cell())
            if term:
                terminated = True
                break
        post_state = self.state()

        if not parsed.format_valid:
            format_r = -self.format_penalty if self.format_penalty else 0.0
        else:
            format_r = self.format_reward if executed else 0.0
        wm = 0.0
        if parsed.format_valid and self.world_model_weight:
            vocab = self.relation_vocabulary
            if "observation" in parsed.fields:
                wm += self.world_model_weight * formats.world_model_score(
                    parsed.fields["observation"], self.relations(pre_state), vocab
                )
            if "prediction" in parsed.fields:
                wm += self.world_model_weight * formats.world_model_score(
                    parsed.fields["prediction"], self.relations(post_state), vocab
                )

        self.turn += 1
        truncated = bool(not terminated and self.max_turns is not None and self.turn >= self.max_turns)
        if terminated or truncated:
            self._ready = False
        success = bool(self.is_success())
        components = {"env": float(env_reward), "format": float(format_r), "world_model": float(wm)}
        info = {
            "reward_components": components,
            "metrics": {
                "format_valid": bool(parsed.format_valid),
                "action_valid": bool(action_valid),
                "action_effective": bool(effective),
                "success": success,
            },
            "state": json_native(post_state),
            "cells": json_native(cells),
            "action_targets": json_native(self.action_targets()),
            "actions": list(executed),
            "events": json_native(self._events),
            "parse_error": parsed.error,
            "failure": self.failure() if (terminated or truncated) and not success else None,
            "level_hash": self._level_hash,
            "turn": self.turn,
        }
        shown = ", ".join(executed) if executed else "none"
        header = f"After your answer, the executed action(s): [{shown}]."
        if parsed.error:
            header += f" (Format problem: {parsed.error[:200]}.)"
        obs = self._observation(header + " The observation is:")
        return obs, float(sum(components.values())), terminated, truncated, info

    def render(self):
        if self.render_mode == "rgb_array":
            return self.render_rgb()
        if self.render_mode == "ansi":
            return self.render_text()
        return None

    # ------------------------------------------------------------------ solvers
    def solve(self) -> list[str]:
        """Optimal action list from the current state (deterministic envs). Envs whose transitions are
        stochastic raise :class:`NoSolverError` and override ``optimal_action()`` instead."""
        raise NoSolverError(f"{type(self).__name__} gives no whole plan; use optimal_action()")

    def turn_plan(self) -> list[str]:
        """The optimal actions for one turn: the plan's first ``max_actions_per_turn`` actions, or the
        single optimal action where there is no whole plan (solver baselines, SFT data, ``envs play``)."""
        try:
            plan = self.solve()
        except NoSolverError:
            plan = [self.optimal_action()]
        return plan[: self.max_actions_per_turn]

    def optimal_action(self) -> str:
        plan = self.solve()
        if not plan:
            raise RuntimeError("no optimal action: the episode is over or the level is unsolvable")
        return plan[0]

    @property
    def level_hash(self) -> str:
        return self._level_hash
