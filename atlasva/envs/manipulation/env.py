"""Primitive-skill tabletop manipulation in MuJoCo (VAGEN's PrimitiveSkill tasks on a CPU).

The agent answers with primitives — ``pick(x,y,z)``, ``place(x,y,z)``,
``push(x1,y1,z1,x2,y2,z2)`` — separated by ``|``; a scripted controller drives a mocap gripper
through each one (approach from above, descend, grasp / release, lift; pushes move the gripper
tip in a straight line with its pusher colliding). A grasp attaches the object within reach of
the commanded point to the gripper; a place lowers it until it touches something or reaches the
commanded height, then lets physics settle it. Coordinates are metres on the table (z = 0 is the
table top, x to the right, y away from the camera).

Tasks: ``align_two_cubes``, ``place_two_cubes``, ``stack_three_cubes``, ``put_in_drawer``,
``swap``. Each has stages (a reward of ``stage_reward`` for each newly reached one) and succeeds at
its last stage (``success_reward``; the episode ends). Bad actions — wrong arity, NaN, coordinates
out of range, unknown verbs — are invalid actions, never crashes. An action is effective when an
object or the drawer moved, or the grasp changed.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from atlasva import formats
from atlasva.envs.base import AtlasEnv
from atlasva.envs.manipulation.scene import (
    APPLE_R,
    CABINET_Y,
    CUBE_HALF,
    DRAWER_IN,
    DRAWER_OPEN,
    DRAWER_WALL,
    Body,
    build_mjcf,
)

TASKS = ("align_two_cubes", "place_two_cubes", "stack_three_cubes", "put_in_drawer", "swap")
XY_RANGE = 0.25
Z_RANGE = (0.0, 0.25)
ARITY = {"pick": 3, "place": 3, "push": 6}
_CALL = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.S)
SPAWN = 0.17  # objects start within |x|, |y| <= SPAWN
MIN_SEP = 0.075
GRASP_TOL = 0.03
PLACE_TOL = 0.02  # a place is reported failed when the object rests farther (xy) from the commanded point
LIFT = 0.1


def render_frame(model: Any, data: Any, width: int, height: int, camera: str) -> Any:
    """A renderer object with ``render(data) -> uint8 H×W×3`` (the shared atlasva.sim one)."""
    from atlasva.sim.render import OffscreenRenderer

    return OffscreenRenderer(model, width, height, camera)


def _fmt(v: float) -> str:
    return f"{v:.3f}".replace("-0.000", "0.000")


class ManipulationEnv(AtlasEnv):
    """Tabletop manipulation with pick/place/push primitives in MuJoCo."""

    env_name = "manipulation"
    action_sep = "|"
    action_names = ("pick(x,y,z)", "place(x,y,z)", "push(x1,y1,z1,x2,y2,z2)")

    #: width, height: pixels (frames also obey image_pixels); grid: table-plane cells per side
    limits = {**AtlasEnv.limits, "width": 1024, "height": 1024, "grid": 64}

    def __init__(
        self,
        *,
        task: str = "align_two_cubes",
        width: int = 128,
        height: int | None = None,
        camera: str = "front",
        grid: int = 10,
        stage_reward: float = 0.5,
        success_reward: float = 1.0,
        speed: float = 0.8,
        max_actions_per_turn: int = 2,
        format_reward: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_actions_per_turn=max_actions_per_turn, format_reward=format_reward, **kwargs)
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
        if camera not in ("front", "top"):
            raise ValueError(f"camera must be 'front' or 'top', got {camera!r}")
        if int(grid) < 2 or float(speed) <= 0:
            raise ValueError(f"grid must be >= 2 and speed > 0 (got grid={grid}, speed={speed})")
        self.check_limit("grid", grid, "cells per side")
        for key, value in (("width", width), ("height", height)):
            if value is not None:
                self.check_limit(key, value, "pixels")
        try:
            from atlasva.sim.render import configure_headless

            configure_headless()
            import mujoco
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("the manipulation env needs MuJoCo: pip install 'atlasva[sim]' (mujoco==3.3.0)") from exc
        self._mj = mujoco
        self.task = task
        self.width = int(width)
        self.height = int(height) if height is not None else self.width
        self.camera = camera
        self.grid = int(grid)
        self.stage_reward, self.success_reward, self.speed = float(stage_reward), float(success_reward), float(speed)
        self.grid_shape = (self.grid, self.grid)
        self.image_shape = (self.height, self.width, 3)
        names = {"align_two_cubes": ("red cube", "green cube"), "place_two_cubes": ("red cube", "green cube"),
                 "stack_three_cubes": ("red cube", "green cube", "blue cube"), "put_in_drawer": ("apple",),
                 "swap": ("red cube", "green cube")}[task]
        self.object_names = names
        self.relation_vocabulary = formats.Vocabulary.of(
            (*names, "drawer"), ("left of", "right of", "in front of", "behind", "on"), (*names, "drawer")
        )
        self._renderer: Any = None
        self._build_spaces()

    # ------------------------------------------------------------------ levels
    def _generate(self, seed: int) -> None:
        rng = np.random.default_rng([int(seed), TASKS.index(self.task), 0x7AB1E])
        n_obj = len(self.object_names)
        n_goal = {"place_two_cubes": 2, "swap": 1}.get(self.task, 0)
        drawer_x = None
        y_hi = SPAWN
        if self.task == "put_in_drawer":
            drawer_x = float(np.round(rng.uniform(-0.12, 0.12), 3))
            y_hi = -0.03
        for _ in range(1000):
            pts = np.round(np.stack([rng.uniform(-SPAWN, SPAWN, n_obj + n_goal), rng.uniform(-SPAWN, y_hi, n_obj + n_goal)], 1), 3)
            d = np.hypot(pts[:, None, 0] - pts[None, :, 0], pts[:, None, 1] - pts[None, :, 1]) + np.eye(len(pts))
            if d.min() < MIN_SEP:
                continue
            if self.task == "align_two_cubes" and (pts[0, 0] > SPAWN - 0.05 or np.hypot(*(pts[1] - pts[0] - [0.045, 0])) < 0.06):
                continue
            break
        else:  # pragma: no cover - the spawn area is large
            raise RuntimeError(f"no manipulation layout found for seed {seed}")
        objects = [(name, float(pts[i, 0]), float(pts[i, 1])) for i, name in enumerate(self.object_names)]
        goal_colours = {"place_two_cubes": ["red", "green"], "swap": ["grey"]}.get(self.task, [])
        goals = [(c, (float(pts[n_obj + i, 0]), float(pts[n_obj + i, 1]))) for i, c in enumerate(goal_colours)]
        self._set_level(objects, goals, drawer_x)

    def _load_level(self, rows: list[str]) -> None:
        objects, goals, drawer_x, task = [], [], None, self.task
        for line in rows:
            parts = line.split()
            try:
                if parts[0] == "task":
                    task = parts[1]
                elif parts[0] == "object":
                    objects.append((" ".join(parts[1:-2]), float(parts[-2]), float(parts[-1])))
                elif parts[0] == "goal":
                    goals.append((parts[1], (float(parts[2]), float(parts[3]))))
                elif parts[0] == "drawer":
                    drawer_x = float(parts[1])
                else:
                    raise ValueError(f"unknown line kind {parts[0]!r}; accepted: task, object, goal, drawer")
            except (IndexError, ValueError) as e:
                raise ValueError(f"bad manipulation level line {line!r}: {e}") from None
        if task != self.task:
            raise ValueError(f"level is for task {task!r} but this env runs {self.task!r}")
        if sorted(o[0] for o in objects) != sorted(self.object_names):
            raise ValueError(f"task {self.task!r} needs objects {list(self.object_names)}, got {[o[0] for o in objects]}")
        for name, x, y in objects:
            if not (abs(x) <= XY_RANGE and abs(y) <= XY_RANGE):
                raise ValueError(f"{name} at ({x}, {y}) is off the workspace (|x|, |y| <= {XY_RANGE})")
        self._set_level(objects, goals, drawer_x)

    def _build_model(self) -> None:
        """One model per env (the task fixes its structure); levels only move bodies and markers."""
        mj = self._mj
        bodies = [Body(n, (0.0, 0.0, APPLE_R if n == "apple" else CUBE_HALF)) for n in self.object_names]
        goals = [(c, (0.0, 0.0)) for c in {"place_two_cubes": ["red", "green"], "swap": ["grey"]}.get(self.task, [])]
        drawer_x = 0.0 if self.task == "put_in_drawer" else None
        self.model = m = mj.MjModel.from_xml_string(build_mjcf(bodies, goals, drawer_x, width=self.width, height=self.height))
        self.data = mj.MjData(m)
        self._body = {n: mj.mj_name2id(m, mj.mjtObj.mjOBJ_BODY, n.replace(" ", "_")) for n in self.object_names}
        self._geom_body = m.geom_bodyid.copy()
        self._qadr = {n: int(m.jnt_qposadr[m.body_jntadr[b]]) for n, b in self._body.items()}
        self._vadr = {n: int(m.jnt_dofadr[m.body_jntadr[b]]) for n, b in self._body.items()}
        ids = {k: mj.mj_name2id(m, mj.mjtObj.mjOBJ_BODY, k) for k in ("gripper", "finger_l", "finger_r")}
        self._mocap = {k: int(m.body_mocapid[i]) for k, i in ids.items()}
        self._gripper_body = set(ids.values())
        self._gripper_id = ids["gripper"]
        self._pusher = mj.mj_name2id(m, mj.mjtObj.mjOBJ_GEOM, "pusher")
        self._goal_geoms = [mj.mj_name2id(m, mj.mjtObj.mjOBJ_GEOM, f"goal_{i}") for i in range(len(goals))]
        self._drawer_q = None
        if drawer_x is not None:
            self._drawer_q = int(m.jnt_qposadr[mj.mj_name2id(m, mj.mjtObj.mjOBJ_JOINT, "drawer")])
            self._drawer_bodies = [mj.mj_name2id(m, mj.mjtObj.mjOBJ_BODY, k) for k in ("cabinet", "drawer")]
        self._renderer = render_frame(self.model, self.data, self.width, self.height, self.camera)

    def _set_pusher(self, on: bool) -> None:
        m = self.model
        m.geom_contype[self._pusher] = m.geom_conaffinity[self._pusher] = int(on)
        m.body_contype[self._gripper_id] = m.body_conaffinity[self._gripper_id] = int(on)

    def _set_level(self, objects: list[tuple[str, float, float]], goals: list[tuple[str, tuple[float, float]]],
                   drawer_x: float | None) -> None:
        mj = self._mj
        if self._renderer is None:
            self._build_model()
        if len(goals) != len(self._goal_geoms) or (drawer_x is None) != (self._drawer_q is None):
            raise ValueError(f"task {self.task!r} needs {len(self._goal_geoms)} goal marker(s) and "
                             f"{'a' if self._drawer_q is not None else 'no'} drawer")
        self._objects0 = objects
        self._goals = goals
        self._drawer_x = drawer_x
        m, d = self.model, self.data
        mj.mj_resetData(m, d)
        for gid, (_, (x, y)) in zip(self._goal_geoms, goals):
            m.geom_pos[gid, :2] = (x, y)
        if drawer_x is not None:
            for b in self._drawer_bodies:
                m.body_pos[b, 0] = drawer_x
            d.qpos[self._drawer_q] = -DRAWER_OPEN
        for name, x, y in objects:
            a = self._qadr[name]
            d.qpos[a : a + 7] = [x, y, APPLE_R if name == "apple" else CUBE_HALF, 1, 0, 0, 0]
        self._set_pusher(False)
        self.gripper = np.array([0.0, -0.15, 0.2])
        self.opening = 0.06
        self.held: str | None = None
        self._held_offset = np.zeros(3)
        self._set_mocap()
        mj.mj_forward(m, d)
        self._settle(60)
        self._stage = self._stage_now()
        self._targets: list[tuple[int, list[int]]] = []
        self._frame: np.ndarray | None = None

    def level_rows(self) -> list[str]:
        rows = [f"task {self.task}"]
        rows += [f"object {n} {_fmt(x)} {_fmt(y)}" for n, x, y in self._objects0]
        rows += [f"goal {c} {_fmt(x)} {_fmt(y)}" for c, (x, y) in self._goals]
        if self._drawer_x is not None:
            rows.append(f"drawer {_fmt(self._drawer_x)}")
        return rows

    # ------------------------------------------------------------------ simulation
    def _set_mocap(self) -> None:
        d, g = self.data, self.gripper
        d.mocap_pos[self._mocap["gripper"]] = g
        d.mocap_pos[self._mocap["finger_l"]] = g + [-self.opening / 2 - 0.004, 0, 0]
        d.mocap_pos[self._mocap["finger_r"]] = g + [self.opening / 2 + 0.004, 0, 0]

    def _attach(self) -> None:
        if self.held is not None:
            a, v = self._qadr[self.held], self._vadr[self.held]
            self.data.qpos[a : a + 3] = self.gripper + self._held_offset
            self.data.qvel[v : v + 6] = 0.0

    def _step(self) -> None:
        self._set_mocap()
        self._attach()
        self._mj.mj_step(self.model, self.data)

    def _settle(self, n: int) -> None:
        for _ in range(n):
            self._step()

    def _held_touches(self) -> bool:
        b = self._body[self.held] if self.held else -1
        d = self.data
        for i in range(d.ncon):
            b1, b2 = self._geom_body[d.contact[i].geom1], self._geom_body[d.contact[i].geom2]
            if (b1 == b and b2 not in self._gripper_body) or (b2 == b and b1 not in self._gripper_body):
                return True
        return False

    def _move(self, target: np.ndarray, speed: float | None = None, stop_on_contact: bool = False) -> None:
        target = np.asarray(target, dtype=np.float64)
        start = self.gripper.copy()
        dist = float(np.linalg.norm(target - start))
        n = max(1, math.ceil(dist / ((speed or self.speed) * self.model.opt.timestep)))
        for i in range(1, n + 1):
            self.gripper = start + (target - start) * (i / n)
            self._step()
            if stop_on_contact and self._held_touches():
                break

    def obj_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self._body[name]].copy()

    def drawer_opening(self) -> float:
        return 0.0 if self._drawer_q is None else float(-self.data.qpos[self._drawer_q])

    def _snapshot(self) -> np.ndarray:
        return np.concatenate([self.obj_pos(n) for n in self.object_names] + [[self.drawer_opening()]])

    # ------------------------------------------------------------------ actions
    def _canonical_action(self, token: str) -> str | None:
        m = _CALL.match(token) if isinstance(token, str) and len(token) < 400 else None
        if not m:
            return None
        verb = m.group(1).lower()
        if verb not in ARITY:
            return None
        try:
            args = [float(a) for a in m.group(2).split(",")]
        except ValueError:
            return None
        if len(args) != ARITY[verb] or not all(math.isfinite(a) for a in args):
            return None
        for i in range(0, len(args), 3):
            x, y, z = args[i : i + 3]
            if abs(x) > XY_RANGE + 1e-9 or abs(y) > XY_RANGE + 1e-9 or not Z_RANGE[0] - 1e-9 <= z <= Z_RANGE[1] + 1e-9:
                return None
        return f"{verb}({', '.join(_fmt(a) for a in args)})"

    def _execute(self, action: str) -> tuple[bool, float, bool]:
        m = _CALL.match(action)
        assert m is not None  # canonical actions always match
        verb, args = m.group(1), [float(a) for a in m.group(2).split(",")]
        before, held_before = self._snapshot(), self.held
        target = self._bin(args[0], args[1])
        self._targets.append((self.turn, target))
        if verb == "push":
            self._targets.append((self.turn, self._bin(args[3], args[4])))
        p = np.array(args[:3])
        if verb == "pick" and self.held is None:
            self.opening = 0.06
            self._move([p[0], p[1], p[2] + LIFT])
            self._move(p, speed=self.speed / 2)
            best, best_d = None, GRASP_TOL
            near = min(float(np.linalg.norm(self.obj_pos(n) - p)) for n in self.object_names)
            for n in self.object_names:
                d = float(np.linalg.norm(self.obj_pos(n) - p))
                if d <= best_d:
                    best, best_d = n, d
            if best is not None:
                self.held = best
                self._held_offset = self.obj_pos(best) - self.gripper
                self.opening = 2 * (APPLE_R if best == "apple" else CUBE_HALF)
            else:
                self.opening = 0.0
            self._move([p[0], p[1], min(p[2] + LIFT, Z_RANGE[1])])
            if best is None:  # closed on air
                self._event("pick_failed", target, target_xyz=args[:3], reason="nothing_in_reach",
                            nearest_object_m=round(near, 4))
            else:
                self._event("pick", target, target_xyz=args[:3], object=best, nearest_object_m=round(near, 4))
        elif verb == "place" and self.held is not None:
            grip = p - self._held_offset
            placed = self.held
            others = [float(np.hypot(*(self.obj_pos(n)[:2] - p[:2]))) for n in self.object_names if n != placed]
            near = round(min(others), 4) if others else None  # xy distance of the target to the nearest other object
            self._move([grip[0], grip[1], max(self.gripper[2], grip[2] + LIFT)])
            self._move(grip, speed=self.speed / 2, stop_on_contact=True)
            self.held, self.opening = None, 0.06
            self._settle(20)
            self._move([self.gripper[0], self.gripper[1], self.gripper[2] + LIFT])
        elif verb == "push" and self.held is None:
            q = np.array(args[3:])
            self.opening = 0.0
            self._move([p[0], p[1], p[2] + LIFT])
            self._move(p, speed=self.speed / 2)
            self._set_pusher(True)
            self._move(q, speed=self.speed / 3)
            self._set_pusher(False)
            self._move([q[0], q[1], min(q[2] + LIFT, Z_RANGE[1])])
        else:  # pick while holding / place with an empty gripper / push while holding
            if verb != "push":
                self._event(f"{verb}_failed", target, target_xyz=args[:3],
                            reason="already_holding" if verb == "pick" else "gripper_empty")
            return False, 0.0, False
        self._settle(40)
        self._frame = None
        if verb == "place":  # judged once the object has come to rest
            miss = float(np.hypot(*(self.obj_pos(placed)[:2] - p[:2])))
            if miss > PLACE_TOL:  # it slid, toppled or landed on something else
                self._event("place_failed", target, target_xyz=args[:3], reason="off_target", object=placed,
                            miss_m=round(miss, 4), nearest_object_m=near)
            else:
                self._event("place", target, target_xyz=args[:3], object=placed, nearest_object_m=near)
        effective = bool(np.abs(self._snapshot() - before).max() > 0.002 or self.held != held_before)
        stage = self._stage_now()
        reward = 0.0
        if stage > self._stage:
            reward += self.stage_reward * (stage - self._stage)
            self._stage = stage
        if self.is_success():
            return effective, reward + self.success_reward, True
        return effective, reward, self.failure() is not None

    # ------------------------------------------------------------------ task logic
    def _on(self, a: str, b: str) -> bool:
        pa, pb = self.obj_pos(a), self.obj_pos(b)
        return bool(np.hypot(*(pa[:2] - pb[:2])) < 0.015 and 0.034 < pa[2] - pb[2] < 0.046)

    def _resting(self, n: str) -> bool:
        return self.held != n and abs(self.obj_pos(n)[2] - CUBE_HALF) < 0.006

    def _at(self, n: str, xy: tuple[float, float] | np.ndarray, tol: float = 0.02) -> bool:
        return self._resting(n) and bool(np.hypot(*(self.obj_pos(n)[:2] - np.asarray(xy))) <= tol)

    def _in_drawer(self) -> bool:
        if self._drawer_x is None:
            return False
        p = self.obj_pos("apple")
        cy = CABINET_Y - self.drawer_opening()
        return self.held != "apple" and abs(p[0] - self._drawer_x) < DRAWER_IN and abs(p[1] - cy) < DRAWER_IN and p[2] < 0.05

    def _align_spot(self) -> np.ndarray:
        return self.obj_pos("red cube")[:2] + [0.045, 0.0]

    def _stages(self) -> list[bool]:
        t = self.task
        if t == "align_two_cubes":
            g, r = self.obj_pos("green cube"), self.obj_pos("red cube")
            aligned = self._resting("green cube") and self._resting("red cube") and abs(g[1] - r[1]) <= 0.01 and 0.035 <= g[0] - r[0] <= 0.06
            return [self._at("green cube", self._align_spot(), 0.03), aligned]
        if t == "place_two_cubes":
            a, b = self._at("red cube", self._goals[0][1]), self._at("green cube", self._goals[1][1])
            return [a or b, a and b]
        if t == "stack_three_cubes":
            s1 = self._on("green cube", "red cube") and self._resting("red cube")
            return [s1, s1 and self._on("blue cube", "green cube") and self.held is None]
        if t == "put_in_drawer":
            inside = self._in_drawer()
            return [inside, inside and self.drawer_opening() < 0.01]
        (_, ra, rb) = self._objects0[0]
        (_, ga, gb) = self._objects0[1]
        a, b = self._at("red cube", (ga, gb)), self._at("green cube", (ra, rb))
        return [a or b, a and b]

    def _stage_now(self) -> int:
        st = self._stages()
        if st[-1]:
            return len(st)
        k = 0
        while k < len(st) and st[k]:
            k += 1
        return k

    def is_success(self) -> bool:
        return bool(self._stages()[-1])

    def failure(self) -> str | None:
        return "object_fell" if any(self.obj_pos(n)[2] < -0.05 for n in self.object_names) else None

    # ------------------------------------------------------------------ state
    def _bin(self, x: float, y: float) -> list[int]:
        w = 2 * XY_RANGE / self.grid
        r = int(np.clip(math.floor((XY_RANGE - y) / w), 0, self.grid - 1))
        c = int(np.clip(math.floor((x + XY_RANGE) / w), 0, self.grid - 1))
        return [r, c]

    def cell(self) -> list[int]:
        return self._bin(float(self.gripper[0]), float(self.gripper[1]))

    def action_targets(self) -> list[list[int]]:
        return [b for t, b in self._targets if t == self.turn - 1]

    def state(self) -> dict[str, Any]:
        objs = []
        for n in self.object_names:
            p = self.obj_pos(n)
            objs.append({"name": n, "position": [round(float(v), 4) for v in p], "cell": self._bin(p[0], p[1]),
                         "held": self.held == n})
        st: dict[str, Any] = {
            "task": self.task,
            "objects": objs,
            "gripper": {"position": [round(float(v), 4) for v in self.gripper], "cell": self.cell(), "holding": self.held},
            "goals": [{"colour": c, "position": [x, y]} for c, (x, y) in self._goals],
            "stage": int(self._stage_now()),
            "num_stages": len(self._stages()),
            "success": self.is_success(),
        }
        if self._drawer_x is not None:
            st["drawer"] = {"position": [self._drawer_x, round(CABINET_Y - self.drawer_opening(), 4), 0.0],
                            "opening": round(self.drawer_opening(), 4), "closed": self.drawer_opening() < 0.01}
        return st

    def relations(self, state: dict[str, Any]) -> list[list[str]]:
        items = [(o["name"], o["position"]) for o in state["objects"]]
        if "drawer" in state:
            items.append(("drawer", state["drawer"]["position"]))
        out: list[list[str]] = []
        for a, pa in items:
            for b, pb in items:
                if a == b or a == "drawer":
                    continue
                dx, dy, dz = pa[0] - pb[0], pa[1] - pb[1], pa[2] - pb[2]
                if b != "drawer" and math.hypot(dx, dy) < 0.02 and 0.03 < dz < 0.05:
                    out.append([a, "on", b])
                    continue
                if abs(dx) > 0.025:
                    out.append([a, "right of" if dx > 0 else "left of", b])
                if abs(dy) > 0.025:
                    out.append([a, "behind" if dy > 0 else "in front of", b])
        return out

    # ------------------------------------------------------------------ text and images
    def _coords(self) -> str:
        parts = [f"{o['name']} at ({', '.join(_fmt(v) for v in o['position'])})" for o in self.state()["objects"]]
        parts += [f"{c} goal marker at ({_fmt(x)}, {_fmt(y)}, 0.000)" for c, (x, y) in self._goals]
        if self._drawer_x is not None:
            cy = CABINET_Y - self.drawer_opening()
            parts.append(f"drawer ({'closed' if self.drawer_opening() < 0.01 else 'open'}) interior centre at "
                         f"({_fmt(self._drawer_x)}, {_fmt(cy)}, {_fmt(DRAWER_WALL + 0.001)}), front face at y = "
                         f"{_fmt(cy - DRAWER_IN - 2 * DRAWER_WALL)}")
        g = ", ".join(_fmt(v) for v in self.gripper)
        return "Objects: " + "; ".join(parts) + f". Gripper at ({g}), holding {self.held or 'nothing'}."

    def _observation(self, header: str) -> dict[str, Any]:
        return super()._observation(header + "\n" + self._coords() if header else header)

    def render_rgb(self) -> np.ndarray:
        if self._frame is None:
            self._frame = self._renderer.render(self.data)
        return self._frame.copy()

    def render_text(self) -> str:
        st = self.state()
        return self._coords() + f" Stage {st['stage']} of {st['num_stages']}."

    def task_text(self) -> str:
        return {
            "align_two_cubes": "Task: place the green cube directly to the right of the red cube, touching it and aligned with it.",
            "place_two_cubes": "Task: place the red cube on the red goal marker and the green cube on the green goal marker.",
            "stack_three_cubes": "Task: stack the green cube on the red cube, then the blue cube on the green cube.",
            "put_in_drawer": "Task: put the apple into the open drawer, then push the drawer closed.",
            "swap": "Task: swap the positions of the red cube and the green cube (the grey marker is a free spot).",
        }[self.task]

    def rules_text(self) -> str:
        return (
            "You control a robot gripper above a table. Coordinates are metres: x to the right, y away from the "
            "camera, z up (z = 0 is the table top); the cubes are 0.04 m wide. Skills: pick(x,y,z) grasps the "
            "object at that point; place(x,y,z) puts the held object with its centre at that point (it stops "
            "early on contact); push(x1,y1,z1,x2,y2,z2) moves the closed gripper tip in a straight line. "
            f"|x|, |y| <= {XY_RANGE}, {Z_RANGE[0]} <= z <= {Z_RANGE[1]}."
        )

    # ------------------------------------------------------------------ knowledge
    def _goal_points(self) -> list[tuple[float, float]]:
        t = self.task
        if t == "align_two_cubes":
            return [tuple(self._align_spot())]
        if t == "place_two_cubes":
            return [xy for _, xy in self._goals]
        if t == "stack_three_cubes":
            return [tuple(self.obj_pos("red cube")[:2])]
        if t == "put_in_drawer":
            return [(self._drawer_x, CABINET_Y - self.drawer_opening())]
        return [(x, y) for _, x, y in self._objects0]

    def grid_heuristics(self) -> dict[str, Any]:
        g = self.grid
        rr, cc = np.mgrid[0:g, 0:g]
        edge = (rr == 0) | (cc == 0) | (rr == g - 1) | (cc == g - 1)
        goals = [self._bin(x, y) for x, y in self._goal_points()]
        dist = np.full((g, g), 10**6)
        for r, c in goals:
            dist = np.minimum(dist, np.maximum(np.abs(rr - r), np.abs(cc - c)))
        dist = np.where(edge, -1, dist)
        for r, c in goals:
            dist[r, c] = 0
        occupied = sorted({tuple(self._bin(*self.obj_pos(n)[:2])) for n in self.object_names})
        return {
            "shape": [g, g],
            "hazard": np.argwhere(edge).tolist(),
            "goals": goals,
            "goal_distance": dist.tolist(),
            "occupied": [list(o) for o in occupied],
            # where the table-plane grid appears in the camera image (for overlays): (col, row, 1) -> (x/W, y/H, 1)
            "table_to_image": self.table_to_image().tolist(),
        }

    def table_to_image(self) -> np.ndarray:
        """3×3 homography from table-plane grid coordinates (col, row, 1), in cells from the top-left
        corner of cell [0, 0], to image coordinates normalised to [0, 1] (x / width, y / height, 1) in
        the observation camera (pinhole model with MuJoCo's vertical field of view; z = 0 is the table)."""
        m, d = self.model, self.data
        cam = self._mj.mj_name2id(m, self._mj.mjtObj.mjOBJ_CAMERA, self.camera)
        rot_t = d.cam_xmat[cam].reshape(3, 3).T  # world -> camera (x right, y up, looking along -z)
        f = 0.5 * self.height / math.tan(math.radians(float(m.cam_fovy[cam])) / 2)
        w = 2 * XY_RANGE / self.grid
        grid_to_world = np.array([[w, 0.0, -XY_RANGE], [0.0, -w, XY_RANGE], [0.0, 0.0, 1.0]])  # -> (x, y, 1), z = 0
        world_to_camera = np.column_stack([rot_t[:, 0], rot_t[:, 1], -rot_t @ d.cam_xpos[cam]])
        camera_to_image = np.array([[f / self.width, 0.0, -0.5], [0.0, -f / self.height, -0.5], [0.0, 0.0, -1.0]])
        return camera_to_image @ world_to_camera @ grid_to_world

    def solve(self) -> list[str]:
        """The scripted task plan from the current state (primitive actions, canonical form)."""
        plan: list[str] = []
        t = self.task

        def mv(name: str, pos: np.ndarray | list[float], dest: list[float]) -> None:
            plan.append(f"pick({', '.join(_fmt(v) for v in pos)})")
            plan.append(f"place({', '.join(_fmt(v) for v in dest)})")

        if self.is_success():
            return []
        if self.held is not None:
            raise RuntimeError("solve() needs an empty gripper: place the held object first")
        if t == "align_two_cubes":
            spot = self._align_spot()
            mv("green cube", self.obj_pos("green cube"), [spot[0], spot[1], CUBE_HALF])
        elif t == "place_two_cubes":
            for n, (_, xy) in zip(("red cube", "green cube"), self._goals):
                if not self._at(n, xy):
                    mv(n, self.obj_pos(n), [xy[0], xy[1], CUBE_HALF])
        elif t == "stack_three_cubes":
            red = self.obj_pos("red cube")
            if not self._on("green cube", "red cube"):
                mv("green cube", self.obj_pos("green cube"), [red[0], red[1], red[2] + 2 * CUBE_HALF])
            mv("blue cube", self.obj_pos("blue cube"), [red[0], red[1], red[2] + 4 * CUBE_HALF])
        elif t == "put_in_drawer":
            cy = CABINET_Y - self.drawer_opening()
            if not self._in_drawer():
                mv("apple", self.obj_pos("apple"), [self._drawer_x, cy, DRAWER_WALL + 0.001 + APPLE_R + 0.002])
            front = cy - DRAWER_IN - 2 * DRAWER_WALL
            closed_front = CABINET_Y - DRAWER_IN - 2 * DRAWER_WALL
            x = self._drawer_x
            plan.append(f"push({_fmt(x)}, {_fmt(front - 0.05)}, 0.020, {_fmt(x)}, {_fmt(closed_front - 0.012)}, 0.020)")
        else:
            (_, ra, rb), (_, ga, gb) = self._objects0
            free = self._goals[0][1]
            if not self._at("red cube", (ga, gb)):
                mv("red cube", self.obj_pos("red cube"), [free[0], free[1], CUBE_HALF])
                mv("green cube", self.obj_pos("green cube"), [ra, rb, CUBE_HALF])
                plan.append(f"pick({_fmt(free[0])}, {_fmt(free[1])}, {_fmt(CUBE_HALF)})")
                plan.append(f"place({_fmt(ga)}, {_fmt(gb)}, {_fmt(CUBE_HALF)})")
            else:
                mv("green cube", self.obj_pos("green cube"), [ra, rb, CUBE_HALF])
        return plan

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()
