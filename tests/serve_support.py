"""Helpers shared by the env-service and pool tests (no tests here).

``TinyGridEnv`` (registered as ``tinygrid``) is a small deterministic grid walk with RGB frames:
fast enough to start servers and step many sessions in a test. ``ServerProcess`` starts a real
``atlasva serve`` on loopback in a subprocess (``python -m atlasva.serve``), importing this module
so the server knows ``tinygrid``; it can be SIGKILLed and restarted on the same port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from atlasva import formats
from atlasva.envs import register
from atlasva.envs.base import AtlasEnv

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


class TinyGridEnv(AtlasEnv):
    """A size×size room; walk to the goal. A seed fixes start and goal (numpy Generator, no hash())."""

    env_name = "tinygrid"
    action_names = ("Up", "Down", "Left", "Right")
    relation_vocabulary = formats.Vocabulary.of(("goal",), ("above", "below", "same row"), ("player",))
    MOVES = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}

    def __init__(self, *, size: int = 5, cell_px: int = 6, **kw: Any) -> None:
        super().__init__(**kw)
        self.size = int(size)
        self.cell_px = int(cell_px)
        self.grid_shape = (self.size, self.size)
        self.image_shape = (self.size * self.cell_px, self.size * self.cell_px, 3)
        self.pos = [0, 0]
        self.goal = [0, 0]
        self._start = [0, 0]
        self._build_spaces()

    def _generate(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        cells = rng.choice(self.size * self.size, size=2, replace=False)
        self._start = [int(cells[0]) // self.size, int(cells[0]) % self.size]
        self.goal = [int(cells[1]) // self.size, int(cells[1]) % self.size]
        self.pos = list(self._start)

    def _load_level(self, rows: list[str]) -> None:
        self.size = len(rows)
        for r, row in enumerate(rows):
            for c, ch in enumerate(row):
                if ch == "P":
                    self._start = [r, c]
                elif ch == "G":
                    self.goal = [r, c]
        self.pos = list(self._start)

    def level_rows(self) -> list[str]:
        rows = []
        for r in range(self.size):
            row = ""
            for c in range(self.size):
                row += "P" if [r, c] == self._start else "G" if [r, c] == self.goal else "_"
            rows.append(row)
        return rows

    def _canonical_action(self, token: str) -> str | None:
        t = token.strip().capitalize()
        return t if t in self.MOVES else None

    def _execute(self, action: str) -> tuple[bool, float, bool]:
        dr, dc = self.MOVES[action]
        r, c = self.pos[0] + dr, self.pos[1] + dc
        if not (0 <= r < self.size and 0 <= c < self.size):
            return False, -0.1, False
        self.pos = [r, c]
        done = self.pos == self.goal
        return True, (1.0 if done else -0.1), done

    def cell(self) -> list[int]:
        return list(self.pos)

    def state(self) -> dict[str, Any]:
        return {"player": list(self.pos), "goal": list(self.goal)}

    def relations(self, state: dict[str, Any]) -> list[list[str]]:
        (pr, _), (gr, _) = state["player"], state["goal"]
        return [["goal", "above" if gr < pr else "below" if gr > pr else "same row", "player"]]

    def render_rgb(self) -> np.ndarray:
        img = np.full(self.image_shape, 30, np.uint8)
        p = self.cell_px
        img[self.goal[0] * p : (self.goal[0] + 1) * p, self.goal[1] * p : (self.goal[1] + 1) * p] = (0, 200, 0)
        img[self.pos[0] * p : (self.pos[0] + 1) * p, self.pos[1] * p : (self.pos[1] + 1) * p] = (220, 40, 40)
        return img

    def render_text(self) -> str:
        return "\n".join(
            "".join("P" if [r, c] == self.pos else "G" if [r, c] == self.goal else "_" for c in range(self.size))
            for r in range(self.size)
        )

    def grid_heuristics(self) -> dict[str, Any]:
        dist = [[abs(r - self.goal[0]) + abs(c - self.goal[1]) for c in range(self.size)] for r in range(self.size)]
        return {"shape": [self.size, self.size], "hazard": [], "goals": [list(self.goal)], "goal_distance": dist}

    def is_success(self) -> bool:
        return self.pos == self.goal

    def solve(self) -> list[str]:
        dr, dc = self.goal[0] - self.pos[0], self.goal[1] - self.pos[1]
        return ["Down" if dr > 0 else "Up"] * abs(dr) + ["Right" if dc > 0 else "Left"] * abs(dc)


register("tinygrid", TinyGridEnv, overwrite=True)

TINY = {"env": "tinygrid", "max_turns": 12, "format": "no_think"}


def answer(*actions: str) -> str:
    return "<answer>" + ",".join(actions) + "</answer>"


def free_think(*actions: str) -> str:
    return "<think>I move.</think><answer>" + ",".join(actions) + "</answer>"


def scripted_texts(
    n_slots: int,
    n_turns: int,
    seed: int = 0,
    actions: tuple[str, ...] = TinyGridEnv.action_names,
    wrap: Any = answer,
) -> list[list[str]]:
    """Deterministic model outputs: mostly moves, sometimes malformed or invalid text."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_slots):
        texts = []
        for _ in range(n_turns):
            u = rng.random()
            if u < 0.1:
                texts.append("I am not sure what to do")  # format-invalid
            elif u < 0.2:
                texts.append(wrap("Jump"))  # action-invalid
            else:
                texts.append(wrap(*rng.choice(list(actions), size=int(rng.integers(1, 3))).tolist()))
        out.append(texts)
    return out


def run_episodes(pool: Any, seeds: list[int], configs: list[dict[str, Any]], texts: list[list[str]]) -> list[Any]:
    """Reset, then step every slot with its scripted texts until it finishes; the full record."""
    record: list[Any] = [pool.reset(seeds, configs)]
    done = [False] * len(seeds)
    for t in range(len(texts[0])):
        step_texts = [None if done[i] else texts[i][t] for i in range(len(seeds))]
        if all(x is None for x in step_texts):
            break
        res = pool.step(step_texts)
        for i, r in enumerate(res):
            if r is not None and (r[2] or r[3]):
                done[i] = True
        record.append(res)
    return record


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested results (numpy images compared by dtype, shape and values)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), f"{path}: {type(a)} vs {type(b)}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        assert np.array_equal(a, b), f"{path}: images differ"
        return
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


# --------------------------------------------------------------------------- server processes


# one client for probes: building an httpx client per call costs ~0.2 s (it loads CA certificates)
PROBE = httpx.Client(timeout=2.0, verify=False, trust_env=False)


def health(url: str) -> dict[str, Any]:
    return PROBE.get(url + "/health").json()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m atlasva.serve`` on 127.0.0.1 in a subprocess (killed at teardown)."""

    def __init__(self, *args: str, port: int | None = None, token: str | None = None) -> None:
        self.port = port or free_port()
        self.args = list(args)
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None
        self._err: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ServerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "atlasva.serve", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--import", "serve_support", *self.args]
        if self.token:
            cmd += ["--token", self.token]
        if self._err is not None:
            self._err.close()
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self._err)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.stderr()}")
            try:
                if PROBE.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server on {self.url} not healthy after {timeout}s")

    def stderr(self) -> str:
        if self._err is None:
            return ""
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL (no clean shutdown), as a crashed machine would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._err is not None:
            self._err.close()
            self._err = None
