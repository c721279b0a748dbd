"""Procedural indoor scenes for the navigation env: rooms, walls, doors and objects, and the
five instruction sets (target choice + instruction text). Everything is drawn from one
``np.random.default_rng`` seeded by the level seed, so a seed fixes a scene in any process.

Coordinates: the house is an ``size × size`` grid of square cells of ``cell_m`` metres.
``row`` is the z bin (row 0 at the top of the map = north), ``col`` the x bin. A cell is a
wall (room id -1) or a floor cell of one room (ids 0..). Objects stand on floor cells and
block them. Headings are 0 = north (-z), 1 = east (+x), 2 = south, 3 = west.

A scene serialises to text rows (:meth:`Scene.to_rows`) — the level's content, hashed for the
train/validation split — and parses back (:func:`scene_from_rows`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

INSTRUCTION_SETS = ("base", "common_sense", "complex_instruction", "visual_appearance", "long_horizon")
HEADINGS = ("north", "east", "south", "west")
# (d_row, d_col) of one step in each heading
HEADING_STEPS = ((-1, 0), (0, 1), (1, 0), (0, -1))


@dataclass(frozen=True)
class Category:
    width: float  # metres (medium size)
    height: float
    purpose: str  # common-sense description (unique per category)


CATEGORIES: dict[str, Category] = {
    "chair": Category(0.50, 0.95, "something you sit on at a desk"),
    "table": Category(0.85, 0.75, "something you put your plate on while eating"),
    "sofa": Category(0.95, 0.85, "somewhere the whole family can sit together"),
    "bed": Category(0.95, 0.65, "somewhere to sleep at night"),
    "lamp": Category(0.40, 1.60, "something that gives light in the evening"),
    "plant": Category(0.50, 1.00, "something that needs watering"),
    "tv": Category(0.80, 1.10, "something to watch the news on"),
    "fridge": Category(0.70, 1.80, "something that keeps food cold"),
    "bookshelf": Category(0.80, 1.80, "something that holds many books"),
    "cabinet": Category(0.60, 0.90, "something with drawers to store things in"),
    "vase": Category(0.30, 0.55, "something to put flowers in"),
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "orange": (235, 130, 30),
    "yellow": (235, 210, 50),
    "green": (50, 160, 60),
    "blue": (45, 90, 210),
    "purple": (130, 60, 170),
    "pink": (235, 130, 180),
    "white": (235, 235, 230),
    "black": (35, 35, 40),
    "brown": (120, 75, 40),
}

SIZES: dict[str, float] = {"small": 0.75, "large": 1.25}


@dataclass(frozen=True)
class RoomType:
    floor: tuple[int, int, int]
    wall: tuple[int, int, int]
    furniture: tuple[str, ...]  # categories that are likely in this room


ROOM_TYPES: dict[str, RoomType] = {
    "kitchen": RoomType((205, 200, 190), (150, 185, 170), ("fridge", "table", "chair", "cabinet", "vase")),
    "living room": RoomType((150, 105, 70), (215, 195, 160), ("sofa", "tv", "lamp", "plant", "bookshelf")),
    "bedroom": RoomType((170, 140, 110), (175, 165, 205), ("bed", "lamp", "cabinet", "chair", "plant")),
    "bathroom": RoomType((185, 205, 215), (120, 160, 195), ("cabinet", "plant", "vase")),
    "office": RoomType((120, 120, 125), (200, 200, 185), ("chair", "table", "bookshelf", "lamp", "tv")),
    "dining room": RoomType((135, 85, 60), (205, 170, 140), ("table", "chair", "vase", "cabinet", "plant")),
}

MIN_ROOM = 4  # cells on a side
MAX_TRIES = 300


@dataclass(frozen=True)
class SceneObject:
    category: str
    colour: str
    size: str
    row: int
    col: int

    @property
    def name(self) -> str:
        return f"{self.size} {self.colour} {self.category}"

    def dims(self) -> tuple[float, float]:
        """(width, height) in metres."""
        spec, k = CATEGORIES[self.category], SIZES[self.size]
        return spec.width * k, spec.height * k


@dataclass
class Scene:
    rooms: np.ndarray  # (size, size) int: -1 wall, else room id
    room_names: list[str]
    objects: list[SceneObject]
    start: tuple[int, int]
    start_heading: int
    target: int
    instruction: str
    instruction_set: str
    cell_m: float = 0.5
    _blocked: np.ndarray | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return int(self.rooms.shape[0])

    @property
    def blocked(self) -> np.ndarray:
        """Cells the agent cannot enter: walls and objects."""
        if self._blocked is None:
            b = self.rooms < 0
            for o in self.objects:
                b[o.row, o.col] = True
            self._blocked = b
        return self._blocked

    def centre(self, row: int, col: int) -> tuple[float, float]:
        """(x, z) in metres of a cell's centre."""
        return (col + 0.5) * self.cell_m, (row + 0.5) * self.cell_m

    def goal_cells(self, radius: float) -> np.ndarray:
        """Free cells whose centre is within ``radius`` metres of the target's centre (boolean grid)."""
        t = self.objects[self.target]
        rr, cc = np.mgrid[0 : self.size, 0 : self.size]
        d = np.hypot(rr - t.row, cc - t.col) * self.cell_m
        return (d <= radius + 1e-9) & ~self.blocked

    def goal_distance(self, radius: float) -> np.ndarray:
        """Moves (4-connected) from each cell to the nearest goal cell; -1 = unreachable or blocked."""
        return bfs(self.blocked, np.argwhere(self.goal_cells(radius)))

    def to_rows(self) -> list[str]:
        rows = ["".join("#" if v < 0 else str(int(v)) for v in row) for row in self.rooms]
        rows += [f"room {i} {name}" for i, name in enumerate(self.room_names)]
        rows += [f"object {o.category} {o.colour} {o.size} {o.row} {o.col}" for o in self.objects]
        rows.append(f"agent {self.start[0]} {self.start[1]} {HEADINGS[self.start_heading]}")
        rows.append(f"target {self.target}")
        rows.append(f"set {self.instruction_set}")
        rows.append(f"task {self.instruction}")
        return rows


def bfs(blocked: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Multi-source 4-connected BFS distances over free cells (-1 = unreachable or blocked)."""
    h, w = blocked.shape
    dist = np.full((h, w), -1, dtype=np.int64)
    queue: deque[tuple[int, int]] = deque()
    for r, c in sources:
        if not blocked[r, c] and dist[r, c] < 0:
            dist[r, c] = 0
            queue.append((int(r), int(c)))
    while queue:
        r, c = queue.popleft()
        for dr, dc in HEADING_STEPS:
            nr, nc = r + dr, c + dc
            if 0 <= nr < h and 0 <= nc < w and dist[nr, nc] < 0 and not blocked[nr, nc]:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


def _connected(blocked: np.ndarray) -> bool:
    free = np.argwhere(~blocked)
    if len(free) == 0:
        return False
    return bool((bfs(blocked, free[:1]) >= 0).sum() == len(free))


# --------------------------------------------------------------------------- layout


def _layout(size: int, rng: np.random.Generator, max_rooms: int) -> np.ndarray:
    """Binary space partition of the house interior into 2..max_rooms rooms joined by doors."""
    wall = np.ones((size, size), dtype=bool)
    wall[1:-1, 1:-1] = False
    leaves: list[tuple[int, int, int, int]] = []
    pending = [(1, 1, size - 2, size - 2)]  # inclusive (r0, c0, r1, c1)
    target_rooms = int(rng.integers(2, max_rooms + 1))
    while pending:
        # split the largest pending rectangle first so rooms stay balanced
        pending.sort(key=lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1))
        r0, c0, r1, c1 = pending.pop()
        h, w = r1 - r0 + 1, c1 - c0 + 1
        can_v, can_h = w >= 2 * MIN_ROOM + 1, h >= 2 * MIN_ROOM + 1
        if len(leaves) + len(pending) + 1 >= target_rooms or not (can_v or can_h):
            leaves.append((r0, c0, r1, c1))
            continue
        vertical = can_v and (not can_h or (w > h) or (w == h and rng.random() < 0.5))
        lo, hi = (c0, c1) if vertical else (r0, r1)
        k = int(rng.integers(lo + MIN_ROOM, hi - MIN_ROOM + 1))
        span_lo, span_hi = (r0, r1) if vertical else (c0, c1)
        d = int(rng.integers(span_lo, span_hi))  # door of two cells: d, d + 1
        if vertical:
            wall[r0 : r1 + 1, k] = True
            wall[d : d + 2, k] = False
            pending += [(r0, c0, r1, k - 1), (r0, k + 1, r1, c1)]
        else:
            wall[k, c0 : c1 + 1] = True
            wall[k, d : d + 2] = False
            pending += [(r0, c0, k - 1, c1), (k + 1, c0, r1, c1)]
    rooms = np.full((size, size), -1, dtype=np.int64)
    leaves.sort()
    for i, (r0, c0, r1, c1) in enumerate(leaves):
        rooms[r0 : r1 + 1, c0 : c1 + 1] = np.where(wall[r0 : r1 + 1, c0 : c1 + 1], -1, i)
    # door cells take the smallest neighbouring room id
    for r, c in np.argwhere(~wall & (rooms < 0)):
        ids = [rooms[r + dr, c + dc] for dr, dc in HEADING_STEPS if rooms[r + dr, c + dc] >= 0]
        rooms[r, c] = min(ids) if ids else 0
    return rooms


def _door_cells(rooms: np.ndarray) -> np.ndarray:
    """Floor cells that lie in a wall line (a wall on two opposite sides)."""
    wall = rooms < 0
    out = np.zeros_like(wall)
    inner = ~wall[1:-1, 1:-1]
    ns = wall[:-2, 1:-1] & wall[2:, 1:-1]
    ew = wall[1:-1, :-2] & wall[1:-1, 2:]
    out[1:-1, 1:-1] = inner & (ns | ew)
    return out


# --------------------------------------------------------------------------- objects and tasks


def _place_objects(
    rooms: np.ndarray, rng: np.random.Generator, n: int, room_names: list[str], forced: list[str]
) -> list[SceneObject] | None:
    doors = _door_cells(rooms)
    near_door = doors.copy()
    for dr, dc in HEADING_STEPS:
        near_door |= np.roll(doors, (dr, dc), axis=(0, 1))
    blocked = rooms < 0
    objects: list[SceneObject] = []
    cats = list(CATEGORIES)
    for i in range(n):
        cand = np.argwhere(~blocked & ~near_door)
        if len(cand) == 0:
            return None
        for _ in range(20):
            r, c = (int(v) for v in cand[int(rng.integers(len(cand)))])
            trial = blocked.copy()
            trial[r, c] = True
            if _connected(trial):
                break
        else:
            return None
        room = ROOM_TYPES[room_names[rooms[r, c]]]
        if i < len(forced):
            cat = forced[i]
        elif rng.random() < 0.7:
            cat = room.furniture[int(rng.integers(len(room.furniture)))]
        else:
            cat = cats[int(rng.integers(len(cats)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        objects.append(SceneObject(cat, colour, size, r, c))
        blocked = trial
    return objects


def _count(objects: list[SceneObject], key: Callable[[SceneObject], Hashable]) -> dict[Hashable, int]:
    out: dict[Hashable, int] = {}
    for o in objects:
        out[key(o)] = out.get(key(o), 0) + 1
    return out


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _choose_target(
    objects: list[SceneObject], rooms: np.ndarray, room_names: list[str], iset: str, rng: np.random.Generator
) -> tuple[int, str] | None:
    """The target index and the instruction for ``iset`` (None if this scene cannot host the set)."""
    cc = _count(objects, lambda o: (o.colour, o.category))
    cands: list[tuple[int, str]] = []
    if iset in ("base", "long_horizon"):
        for i, o in enumerate(objects):
            if cc[(o.colour, o.category)] == 1:
                text = f"Navigate to the {o.colour} {o.category}."
                if iset == "long_horizon":
                    room = room_names[rooms[o.row, o.col]]
                    text = f"Go to the {room}, and find the {o.colour} {o.category} there."
                cands.append((i, text))
    elif iset == "common_sense":
        cat = _count(objects, lambda o: o.category)
        for i, o in enumerate(objects):
            if cat[o.category] == 1:
                cands.append((i, f"Find {CATEGORIES[o.category].purpose}."))
    elif iset == "visual_appearance":
        sc = _count(objects, lambda o: (o.size, o.colour))
        for i, o in enumerate(objects):
            if sc[(o.size, o.colour)] == 1:
                cands.append((i, f"Go to the {o.size} object that is {o.colour}."))
    elif iset == "complex_instruction":
        cat = _count(objects, lambda o: o.category)
        for i, o in enumerate(objects):
            if cat[o.category] < 2:
                continue
            same = [j for j, p in enumerate(objects) if p.category == o.category and j != i]
            for ref in objects:
                if ref.category == o.category or cc[(ref.colour, ref.category)] != 1:
                    continue
                d_t = np.hypot(ref.row - o.row, ref.col - o.col)
                d_o = min(np.hypot(ref.row - objects[j].row, ref.col - objects[j].col) for j in same)
                if d_t + 2.0 <= d_o:  # clearly the closest one (in cells)
                    cands.append((i, f"Go to the {o.category} that is closest to the {ref.colour} {ref.category}."))
                    break
    else:
        raise ValueError(f"unknown instruction_set {iset!r}; accepted: {', '.join(INSTRUCTION_SETS)}")
    if not cands:
        return None
    return cands[int(rng.integers(len(cands)))]


def generate_scene(
    seed: int,
    instruction_set: str = "base",
    *,
    size: int = 16,
    cell_m: float = 0.5,
    n_objects: tuple[int, int] = (6, 9),
    max_rooms: int = 4,
    success_distance: float = 1.0,
    min_start_moves: int = 4,
) -> Scene:
    """The scene for ``seed`` (deterministic in any process)."""
    if instruction_set not in INSTRUCTION_SETS:
        raise ValueError(f"unknown instruction_set {instruction_set!r}; accepted: {', '.join(INSTRUCTION_SETS)}")
    if size < 2 * MIN_ROOM + 3:
        raise ValueError(f"size must be >= {2 * MIN_ROOM + 3} cells to hold two rooms, got {size}")
    lo, hi = int(n_objects[0]), int(n_objects[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"n_objects must be (lo, hi) with 1 <= lo <= hi, got {n_objects}")
    if not 2 <= max_rooms <= len(ROOM_TYPES):
        raise ValueError(f"max_rooms must be in [2, {len(ROOM_TYPES)}], got {max_rooms}")
    rng = np.random.default_rng([int(seed), INSTRUCTION_SETS.index(instruction_set)])
    for _ in range(MAX_TRIES):
        rooms = _layout(size, rng, max_rooms)
        if not _connected(rooms < 0):
            continue
        n_rooms = int(rooms.max()) + 1
        names = [list(ROOM_TYPES)[int(i)] for i in rng.permutation(len(ROOM_TYPES))[:n_rooms]]
        forced: list[str] = []
        if instruction_set == "complex_instruction":
            cat = list(CATEGORIES)[int(rng.integers(len(CATEGORIES)))]
            forced = [cat, cat]
        objects = _place_objects(rooms, rng, int(rng.integers(lo, hi + 1)), names, forced)
        if objects is None:
            continue
        if instruction_set == "complex_instruction":  # shuffle so the pair is not always first
            objects = [objects[int(i)] for i in rng.permutation(len(objects))]
        choice = _choose_target(objects, rooms, names, instruction_set, rng)
        if choice is None:
            continue
        target, text = choice
        scene = Scene(rooms, names, objects, (0, 0), 0, target, text, instruction_set, float(cell_m))
        dist = scene.goal_distance(success_distance)
        ok = dist >= min_start_moves
        if instruction_set == "long_horizon":
            t = objects[target]
            ok &= rooms != rooms[t.row, t.col]
        cand = np.argwhere(ok)
        if len(cand) == 0:
            continue
        r, c = (int(v) for v in cand[int(rng.integers(len(cand)))])
        scene.start, scene.start_heading = (r, c), int(rng.integers(4))
        return scene
    raise RuntimeError(
        f"no {instruction_set!r} navigation scene found for seed {seed} in {MAX_TRIES} tries "
        f"(size={size}, n_objects={n_objects}); use a larger size or more objects"
    )


# --------------------------------------------------------------------------- text form


def scene_from_rows(rows: list[str], cell_m: float = 0.5) -> Scene:
    """Parse :meth:`Scene.to_rows` output. Errors name the bad line and what is accepted."""
    grid = [r for r in rows if r and " " not in r]
    meta = [r for r in rows if " " in r]
    if not grid or any(len(r) != len(grid[0]) for r in grid) or len(grid) != len(grid[0]):
        raise ValueError("a navigation level starts with a square grid of rows ('#' wall, digit = room id)")
    try:
        rooms = np.array([[-1 if ch == "#" else int(ch) for ch in r] for r in grid], dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"navigation grid symbols are '#' (wall) and digits (room ids): {e}") from None
    if not (rooms[0] < 0).all() or not (rooms[-1] < 0).all() or not (rooms[:, 0] < 0).all() or not (rooms[:, -1] < 0).all():
        raise ValueError("a navigation level must be enclosed by walls ('#' on every border cell)")
    names: dict[int, str] = {}
    objects: list[SceneObject] = []
    start: tuple[int, int] | None = None
    heading, target, iset, text = 0, None, "base", ""
    for line in meta:
        key, _, rest = line.partition(" ")
        parts = rest.split()
        try:
            if key == "room":
                names[int(parts[0])] = " ".join(parts[1:])
            elif key == "object":
                cat, colour, size, r, c = parts
                if cat not in CATEGORIES or colour not in COLOURS or size not in SIZES:
                    raise ValueError(f"unknown category/colour/size in {line!r}")
                objects.append(SceneObject(cat, colour, size, int(r), int(c)))
            elif key == "agent":
                start, heading = (int(parts[0]), int(parts[1])), HEADINGS.index(parts[2])
            elif key == "target":
                target = int(parts[0])
            elif key == "set":
                iset = parts[0]
            elif key == "task":
                text = rest
            else:
                raise ValueError(f"unknown line kind {key!r}; accepted: room, object, agent, target, set, task")
        except (IndexError, ValueError) as e:
            raise ValueError(f"bad navigation level line {line!r}: {e}") from None
    n_rooms = int(rooms.max()) + 1
    for i in range(n_rooms):
        names.setdefault(i, "room")
        if names[i] not in ROOM_TYPES:
            names[i] = "living room" if names[i] == "room" else names[i]
        if names[i] not in ROOM_TYPES:
            raise ValueError(f"unknown room type {names[i]!r}; accepted: {', '.join(ROOM_TYPES)}")
    if start is None or target is None:
        raise ValueError("a navigation level needs an 'agent ROW COL HEADING' line and a 'target INDEX' line")
    if not 0 <= target < len(objects):
        raise ValueError(f"target index {target} out of range for {len(objects)} objects")
    scene = Scene(rooms, [names[i] for i in range(n_rooms)], objects, start, heading, target, text, iset, cell_m)
    for o in objects:
        if not (0 <= o.row < scene.size and 0 <= o.col < scene.size) or rooms[o.row, o.col] < 0:
            raise ValueError(f"object {o.name} at ({o.row}, {o.col}) is not on a floor cell")
    r, c = start
    if not (0 <= r < scene.size and 0 <= c < scene.size) or scene.blocked[r, c]:
        raise ValueError(f"agent start ({r}, {c}) is not a free floor cell")
    return scene
