"""Embodied navigation in procedurally generated indoor scenes, rendered first person on the CPU.

The agent stands on the centre of a grid cell (``cell_m`` metres, the move step), faces one of
four headings and tilts its camera in ``pitch_step`` steps. Actions follow VAGEN's navigation
env: ``move_forward | move_backward | move_left | move_right | turn_left | turn_right | look_up |
look_down``, several per turn separated by ``|``. Moving into a wall or a piece of furniture does
nothing (an ineffective action). The episode succeeds as soon as the agent is within
``success_distance`` (1.0 m) of the target object; there is no stop action.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from atlasva import formats
from atlasva.envs.base import AtlasEnv
from atlasva.envs.navigation.render import Raycaster, render_map
from atlasva.envs.navigation.scene import (
    HEADING_STEPS,
    HEADINGS,
    INSTRUCTION_SETS,
    Scene,
    generate_scene,
    scene_from_rows,
)

MOVES = {"move_forward": 0, "move_right": 1, "move_backward": 2, "move_left": 3}  # heading offset
TURNS = {"turn_right": 1, "turn_left": -1}
LOOKS = {"look_up": 1, "look_down": -1}
ACTIONS = ("move_forward", "move_backward", "move_left", "move_right", "turn_left", "turn_right", "look_up", "look_down")


class NavigationEnv(AtlasEnv):
    """Embodied navigation: reach the described object in a procedurally generated house."""

    env_name = "navigation"
    action_sep = "|"
    action_names = ACTIONS
    relation_vocabulary = formats.Vocabulary.of(
        ("target",), ("ahead of", "behind", "left of", "right of", "near", "far from"), ("agent",)
    )
    #: size: cells per side; width, height, map_cell_px: pixels; n_objects: the upper end; options.level:
    #: lines and characters per line of a given level (the grid rows plus room, object and task lines)
    limits = {**AtlasEnv.limits, "size": 32, "width": 1024, "height": 1024, "map_cell_px": 32, "n_objects": 16,
              "options.level": 256}

    def __init__(
        self,
        *,
        instruction_set: str = "base",
        size: int = 16,
        cell_m: float = 0.5,
        n_objects: tuple[int, int] | list[int] = (6, 9),
        max_rooms: int = 4,
        width: int = 128,
        height: int | None = None,
        fov: float = 90.0,
        camera_height: float = 1.5,
        wall_height: float = 2.5,
        pitch_step: float = 30.0,
        look_up_steps: int = 1,
        look_down_steps: int = 1,
        success_distance: float = 1.0,
        near_distance: float = 2.0,
        success_reward: float = 1.0,
        step_penalty: float = 0.0,
        map_cell_px: int = 12,
        max_actions_per_turn: int = 5,
        format_reward: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_actions_per_turn=max_actions_per_turn, format_reward=format_reward, **kwargs)
        if instruction_set not in INSTRUCTION_SETS:
            raise ValueError(f"unknown instruction_set {instruction_set!r}; accepted: {', '.join(INSTRUCTION_SETS)}")
        if not isinstance(n_objects, list | tuple) or len(n_objects) != 2:
            raise ValueError(f"n_objects must be [lo, hi], got {n_objects!r}")
        self.check_limit("size", size, "cells per side")
        self.check_limit("n_objects", n_objects)
        for key, value in (("width", width), ("height", height), ("map_cell_px", map_cell_px)):
            if value is not None:
                self.check_limit(key, value, "pixels")
        if float(cell_m) <= 0 or float(success_distance) <= 0:
            raise ValueError(f"cell_m ({cell_m}) and success_distance ({success_distance}) must be > 0")
        if float(pitch_step) <= 0 or int(look_up_steps) < 0 or int(look_down_steps) < 0:
            raise ValueError("pitch_step must be > 0 and look_up_steps / look_down_steps >= 0")
        if max(int(look_up_steps), int(look_down_steps)) * float(pitch_step) >= 80:
            raise ValueError("the camera pitch must stay below 80 degrees (pitch_step x look steps)")
        self.instruction_set = instruction_set
        self.size, self.cell_m = int(size), float(cell_m)
        self.n_objects = (int(n_objects[0]), int(n_objects[1]))
        self.max_rooms = int(max_rooms)
        self.width = int(width)
        self.height = int(height) if height is not None else self.width
        self.fov, self.camera_height, self.wall_height = float(fov), float(camera_height), float(wall_height)
        self.pitch_step = float(pitch_step)
        self.look_up_steps, self.look_down_steps = int(look_up_steps), int(look_down_steps)
        self.success_distance, self.near_distance = float(success_distance), float(near_distance)
        self.success_reward, self.step_penalty = float(success_reward), float(step_penalty)
        self.map_cell_px = int(map_cell_px)
        self.grid_shape = (self.size, self.size)
        self.image_shape = (self.height, self.width, 3)
        # validate the render settings early (clear errors at construction, not at reset)
        Raycaster(generate_scene(0, "base", size=self.size, cell_m=self.cell_m, n_objects=self.n_objects,
                                 max_rooms=self.max_rooms, success_distance=self.success_distance),
                  self.width, self.height, self.fov, self.camera_height, self.wall_height)
        self._build_spaces()

    # ------------------------------------------------------------------ levels
    def _set_scene(self, scene: Scene) -> None:
        self.scene = scene
        self.row, self.col = scene.start
        self.heading = scene.start_heading
        self.pitch = 0  # in pitch steps, positive = up
        self._raycaster = Raycaster(scene, self.width, self.height, self.fov, self.camera_height, self.wall_height)
        self._heuristics: dict[str, Any] | None = None
        self._frame_key: tuple[int, int, int, int] | None = None
        self._frame: np.ndarray | None = None

    def _generate(self, seed: int) -> None:
        self._set_scene(
            generate_scene(
                seed,
                self.instruction_set,
                size=self.size,
                cell_m=self.cell_m,
                n_objects=self.n_objects,
                max_rooms=self.max_rooms,
                success_distance=self.success_distance,
            )
        )

    def _load_level(self, rows: list[str]) -> None:
        scene = scene_from_rows(rows, self.cell_m)
        if scene.size != self.size:
            raise ValueError(f"level is {scene.size}x{scene.size} cells but this env has size={self.size}")
        self._set_scene(scene)

    def level_rows(self) -> list[str]:
        return self.scene.to_rows()

    # ------------------------------------------------------------------ dynamics
    def _canonical_action(self, token: str) -> str | None:
        key = token.strip().strip("'\"`").strip().lower().replace(" ", "_").replace("-", "_")
        return key if key in ACTIONS else None

    def _execute(self, action: str) -> tuple[bool, float, bool]:
        reward = -self.step_penalty
        if action in MOVES:
            dr, dc = HEADING_STEPS[(self.heading + MOVES[action]) % 4]
            r, c = self.row + dr, self.col + dc
            if not (0 <= r < self.size and 0 <= c < self.size) or self.scene.blocked[r, c]:
                inside = 0 <= r < self.size and 0 <= c < self.size
                self._event("collision", [r, c] if inside else self.cell(),
                            **{"from": self.cell(), "action": action, "heading": HEADINGS[self.heading]})
                return False, reward, False  # collision: nothing happens
            self.row, self.col = r, c
            if self.is_success():
                return True, reward + self.success_reward, True
            return True, reward, False
        if action in TURNS:
            self.heading = (self.heading + TURNS[action]) % 4
            return True, reward, False
        new = self.pitch + LOOKS[action]
        if not -self.look_down_steps <= new <= self.look_up_steps:
            return False, reward, False
        self.pitch = new
        return True, reward, False

    def position(self) -> tuple[float, float]:
        return self.scene.centre(self.row, self.col)

    def distance_to_target(self) -> float:
        t = self.scene.objects[self.scene.target]
        return math.hypot(self.row - t.row, self.col - t.col) * self.cell_m

    def is_success(self) -> bool:
        return self.distance_to_target() <= self.success_distance + 1e-9

    def cell(self) -> list[int]:
        return [int(self.row), int(self.col)]

    def _object_state(self, i: int) -> dict[str, Any]:
        o = self.scene.objects[i]
        x, z = self.scene.centre(o.row, o.col)
        return {
            "index": i,
            "name": o.name,
            "category": o.category,
            "colour": o.colour,
            "size": o.size,
            "cell": [o.row, o.col],
            "position": [round(x, 4), round(z, 4)],
            "room": self.scene.room_names[int(self.scene.rooms[o.row, o.col])],
        }

    def state(self) -> dict[str, Any]:
        x, z = self.position()
        return {
            "agent": {
                "cell": self.cell(),
                "position": [round(x, 4), round(z, 4)],
                "heading": HEADINGS[self.heading],
                "heading_deg": 90 * self.heading,
                "pitch_deg": self.pitch * self.pitch_step,
                "room": self.scene.room_names[int(self.scene.rooms[self.row, self.col])],
            },
            "target": self._object_state(self.scene.target),
            "objects": [self._object_state(i) for i in range(len(self.scene.objects))],
            "rooms": list(self.scene.room_names),
            "distance_to_target": round(self.distance_to_target(), 4),
            "instruction": self.scene.instruction,
            "instruction_set": self.scene.instruction_set,
            "shape": [self.size, self.size],
            "success": self.is_success(),
        }

    @staticmethod
    def _bearing(agent: dict[str, Any], point: list[float]) -> tuple[float, float]:
        """(angle in degrees, positive to the right; distance in metres) of ``point`` from the agent."""
        a = math.radians(agent["heading_deg"])
        rx, rz = point[0] - agent["position"][0], point[1] - agent["position"][1]
        fwd = rx * math.sin(a) - rz * math.cos(a)
        lat = rx * math.cos(a) + rz * math.sin(a)
        return math.degrees(math.atan2(lat, fwd)), math.hypot(rx, rz)

    def relations(self, state: dict[str, Any]) -> list[list[str]]:
        angle, dist = self._bearing(state["agent"], state["target"]["position"])
        if abs(angle) <= 45.0 + 1e-9:
            where = "ahead of"
        elif abs(angle) >= 135.0 - 1e-9:
            where = "behind"
        else:
            where = "right of" if angle > 0 else "left of"
        near = "near" if dist <= self.near_distance + 1e-9 else "far from"
        return [["target", where, "agent"], ["target", near, "agent"]]

    # ------------------------------------------------------------------ rendering
    def render_rgb(self) -> np.ndarray:
        key = (self.row, self.col, self.heading, self.pitch)
        if self._frame_key != key or self._frame is None:
            x, z = self.position()
            self._frame = self._raycaster.render(x, z, 90.0 * self.heading, self.pitch * self.pitch_step)
            self._frame_key = key
        return self._frame.copy()

    def render_map(self, cell_px: int | None = None) -> np.ndarray:
        """Top-down map (uint8 H×W×3) for the memory panel and for people."""
        return render_map(
            self.scene, (self.row, self.col), self.heading, cell_px=cell_px or self.map_cell_px,
            goal_radius=self.success_distance,
        )

    def _line_of_sight(self, row: int, col: int) -> bool:
        """No wall cell between the agent's cell centre and the centre of (row, col)."""
        n = int(max(abs(row - self.row), abs(col - self.col)) * 8) + 1
        ts = np.linspace(0.0, 1.0, n + 1)
        rr = np.floor(self.row + 0.5 + ts * (row - self.row)).astype(np.int64)
        cc = np.floor(self.col + 0.5 + ts * (col - self.col)).astype(np.int64)
        return not bool((self.scene.rooms[rr, cc] < 0).any())

    def visible_objects(self) -> list[tuple[int, float, float]]:
        """(object index, angle in degrees (+ right), distance in metres) of objects in view, nearest first."""
        st = self.state()
        out = []
        for i, o in enumerate(st["objects"]):
            angle, dist = self._bearing(st["agent"], o["position"])
            if abs(angle) <= self.fov / 2 and self._line_of_sight(*o["cell"]):
                out.append((i, angle, dist))
        return sorted(out, key=lambda t: (t[2], t[0]))

    def render_text(self) -> str:
        st = self.state()
        tilt = (
            "level" if self.pitch == 0
            else f"tilted {'up' if self.pitch > 0 else 'down'} {abs(self.pitch) * self.pitch_step:g} deg"
        )
        lines = [f"You are in the {st['agent']['room']}, facing {st['agent']['heading']}, camera {tilt}."]
        seen = []
        for i, angle, dist in self.visible_objects():
            side = "straight ahead" if abs(angle) < 5 else f"{abs(angle):.0f} deg to the {'right' if angle > 0 else 'left'}"
            seen.append(f"a {self.scene.objects[i].name} {dist:.1f} m away, {side}")
        lines.append("In view: " + ("; ".join(seen) if seen else "no objects") + ".")
        dist = self._raycaster.cast(*self.position(), 90.0 * self.heading)[0][self.width // 2]
        lines.append(f"Wall straight ahead at {dist:.1f} m.")
        return "\n".join(lines)

    def task_text(self) -> str:
        return f"Task: {self.scene.instruction}"

    def rules_text(self) -> str:
        return (
            "You are a home robot that navigates an indoor scene seen through your own camera (first person). "
            f"move_forward and move_backward move {self.cell_m:g} m along your heading; move_left and move_right "
            f"step {self.cell_m:g} m sideways; turn_left and turn_right rotate you 90 degrees; look_up and look_down "
            f"tilt the camera {self.pitch_step:g} degrees. Walls and furniture block movement (a blocked move does "
            f"nothing). You succeed as soon as you are within {self.success_distance:g} m of the target object."
        )

    # ------------------------------------------------------------------ knowledge
    def grid_heuristics(self) -> dict[str, Any]:
        if self._heuristics is None:
            sc = self.scene
            blocked = sc.blocked
            objects = np.zeros_like(blocked)
            for o in sc.objects:
                objects[o.row, o.col] = True
            self._heuristics = {
                "shape": [self.size, self.size],
                "hazard": np.argwhere(blocked).tolist(),
                "goals": np.argwhere(sc.goal_cells(self.success_distance)).tolist(),
                "goal_distance": sc.goal_distance(self.success_distance).tolist(),
                "walls": np.argwhere(sc.rooms < 0).tolist(),
                "obstacles": np.argwhere(objects).tolist(),
                "rooms": sc.rooms.tolist(),
            }
        return self._heuristics

    def solve(self) -> list[str]:
        """Fewest primitive actions to the target: BFS over (cell, heading) (ties: action order)."""
        if self.is_success():
            return []
        goal = self.scene.goal_cells(self.success_distance)
        start = (self.row, self.col, self.heading)
        prev: dict[tuple[int, int, int], tuple[tuple[int, int, int], str]] = {}
        seen = {start}
        queue = deque([start])
        while queue:
            s = queue.popleft()
            r, c, h = s
            for act in ACTIONS:
                if act in MOVES:
                    dr, dc = HEADING_STEPS[(h + MOVES[act]) % 4]
                    n = (r + dr, c + dc, h)
                    if not (0 <= n[0] < self.size and 0 <= n[1] < self.size) or self.scene.blocked[n[0], n[1]]:
                        continue
                elif act in TURNS:
                    n = (r, c, (h + TURNS[act]) % 4)
                else:
                    continue  # looking never brings the target closer
                if n in seen:
                    continue
                seen.add(n)
                prev[n] = (s, act)
                if goal[n[0], n[1]]:
                    plan = []
                    while n != start:
                        n, a = prev[n]
                        plan.append(a)
                    return plan[::-1]
                queue.append(n)
        raise RuntimeError(
            f"the target ({self.scene.objects[self.scene.target].name}) cannot be reached from cell "
            f"{self.cell()}: no free path to within {self.success_distance:g} m of it"
        )
