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


# --------------------------------------------------------------------------- fault injection


class FaultProxy:
    """An HTTP/1.1 proxy on loopback in front of an env server that injects faults into chosen requests.

    ``add(path_part, kind, times=1)`` arms a fault for the next ``times`` requests whose path contains
    ``path_part`` (faults are taken in the order added; ``pass`` lets requests through untouched): ``drop`` (forward, then close the connection halfway through the response: the server
    did the work, the client never hears of it), ``delay`` (forward, hold the response ``seconds``: the
    client's timeout fires first), ``corrupt`` (forward, flip one character in the middle of the first
    PNG: still valid JSON and base64), ``kill_before`` / ``kill_after`` (call ``on_kill`` — e.g. SIGKILL
    the server — before forwarding, or after the server answered, and close the connection).
    ``applied`` counts the faults injected by kind.
    """

    def __init__(self, upstream_port: int, on_kill: Any = None) -> None:
        import threading

        self.upstream_port = upstream_port
        self.on_kill = on_kill
        self.faults: list[dict[str, Any]] = []
        self.applied: dict[str, int] = {}
        self.seconds = 1.0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="fault-proxy")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, path_part: str, kind: str, times: int = 1) -> FaultProxy:
        assert kind in ("pass", "drop", "delay", "corrupt", "kill_before", "kill_after"), kind
        with self._lock:
            self.faults.append({"path": path_part, "kind": kind, "left": int(times)})
        return self

    def close(self) -> None:
        self._stop = True
        self._sock.close()

    def _take(self, path: str) -> str | None:
        with self._lock:
            for f in self.faults:
                if f["left"] > 0 and f["path"] in path:
                    f["left"] -= 1
                    self.applied[f["kind"]] = self.applied.get(f["kind"], 0) + 1
                    return str(f["kind"])
        return None

    def _accept(self) -> None:
        import threading

        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_message(f: Any) -> tuple[bytes, bytes] | None:
        """(head, body) of one HTTP message from a binary file; None at EOF."""
        head = b""
        while True:
            line = f.readline()
            if not line:
                return None
            head += line
            if line in (b"\r\n", b"\n"):
                break
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = f.read(length) if length else b""
        return head, body

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as rf:
            while True:
                msg = self._read_message(rf)
                if msg is None:
                    return
                head, body = msg
                path = head.split(b" ", 2)[1].decode()
                kind = self._take(path)
                if kind == "kill_before":
                    self.on_kill()
                    return
                try:
                    with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30) as up, up.makefile("rb") as uf:
                        up.sendall(head + body)
                        reply = self._read_message(uf)
                except OSError:
                    return  # the server is down: the client sees its connection closed
                if reply is None:
                    return
                rhead, rbody = reply
                if kind == "kill_after":
                    self.on_kill()
                    return
                if kind == "drop":
                    conn.sendall((rhead + rbody)[: (len(rhead) + len(rbody)) // 2])
                    return
                if kind == "delay":
                    time.sleep(self.seconds)
                if kind == "corrupt":
                    rbody = self._corrupt(rbody)
                    lines = [ln for ln in rhead.split(b"\r\n") if not ln.lower().startswith(b"content-length:")]
                    rhead = b"\r\n".join([lines[0], b"content-length: %d" % len(rbody), *lines[1:]])
                try:
                    conn.sendall(rhead + rbody)
                except OSError:
                    return

    @staticmethod
    def _corrupt(body: bytes) -> bytes:
        """Flip one bit of one pixel of the first frame and send it as a well-formed PNG under the same
        ``sha``: the damage no PNG or zlib checksum can see, only the frame's hash."""
        import base64

        from atlasva.serve.codec import decode_png, encode_png

        start = body.find(b'"png":"')
        assert start >= 0, "no frame to corrupt in this response"
        start += len(b'"png":"')
        end = body.find(b'"', start)
        pixels = decode_png(base64.b64decode(body[start:end]))
        pixels[pixels.shape[0] // 2, pixels.shape[1] // 2, 0] ^= 0x10
        return body[:start] + base64.b64encode(encode_png(pixels)) + body[end:]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
