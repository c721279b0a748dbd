"""Teacher-free atomic subtask segmentation of demonstrations (AtomVLA Stage I, without GPT-4o).

An episode is cut at *events* read from its proprioception, actions and, where the simulator records it,
the object's position:

* ``grip_close`` / ``grip_open`` — the gripper command crosses the midpoint of its range in this episode
  (debounced: the new side holds for ``hold`` frames); no event when the command barely varies;
* ``object_moves`` — the object first lies more than ``object_move_m`` from where it started (contact);
* ``object_lifted`` — the object first rises more than ``object_lift_m`` above its start;
* ``descend`` — the hand moves down faster than ``descend_speed`` for ``hold`` frames in a row;
* ``speed_min`` — a local minimum of the (moving-average) hand speed below ``speed_min_ratio`` × the
  episode's median speed: where a reaching motion ends.

A per-task **template** (``TEMPLATES``; ``atom.segment.templates`` adds or replaces them) names the
subtasks of a task whose structure is known and the event that ends each one; the events are searched
in order, each after the previous cut. A template event that never happens merges its subtask into the
next one (the episode is reported as a partial match). Tasks without a template are cut **generically**:
gripper and object events first, then the clearest speed minima until there are ``min_segments``, at
most ``max_segments``, none shorter than ``min_length`` frames; each segment is named from its end event
and its dominant hand motion, or by an OpenAI-compatible LLM (:func:`llm_names`).

Cuts are stored as ``starts`` (the first frame of each subtask, ``starts[0] = 0``); the *boundary frame*
of subtask k — the subgoal the world model scores against — is its last frame, ``starts[k + 1] − 1``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EVENT_KINDS = ("grip_close", "grip_open", "object_moves", "object_lifted", "descend", "speed_min")
END = "end"
#: generic cutting order: stronger evidence first
_PRIORITY = {"grip_close": 3, "grip_open": 3, "object_moves": 2, "object_lifted": 2, "descend": 1, "speed_min": 1}

#: Meta-World tasks whose structure the scripted experts make explicit: (subtask text, event that ends it)
TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "drawer-open-v3": [("reach the drawer handle", "object_moves"), ("pull the drawer open", END)],
    "drawer-close-v3": [("reach the drawer front", "object_moves"), ("push the drawer closed", END)],
    "door-open-v3": [("reach the door handle", "object_moves"), ("pull the door open", END)],
    "window-open-v3": [("reach the window handle", "object_moves"), ("slide the window open", END)],
    "pick-place-v3": [("reach the puck", "grip_close"), ("grasp and lift the puck", "object_lifted|object_moves"),
                      ("carry the puck to the goal", END)],
    "assembly-v3": [("reach the nut", "grip_close"), ("grasp and lift the nut", "object_lifted|object_moves"),
                    ("carry the nut above the peg", "descend"), ("lower the nut onto the peg", END)],
    "basketball-v3": [("reach the ball", "grip_close"), ("grasp and lift the ball", "object_lifted|object_moves"),
                      ("carry the ball over the hoop", "descend"), ("drop the ball into the hoop", END)],
    "hammer-v3": [("reach the hammer", "grip_close"), ("grasp and lift the hammer", "object_lifted|object_moves"),
                  ("hit the nail with the hammer", END)],
}


@dataclass
class SegmentSettings:
    """Thresholds of the event detectors and the generic cutter (metres, frames, action units)."""

    min_segments: int = 2
    max_segments: int = 5
    min_length: int = 4
    hold: int = 3
    speed_window: int = 5
    speed_min_ratio: float = 0.5
    object_move_m: float = 0.01
    object_lift_m: float = 0.02
    descend_speed: float = 0.004  # metres per frame (Meta-World moves the hand ≤ 1 cm per step)
    grip_min_range: float = 0.5  # the gripper command must span this much to give events

    def __post_init__(self) -> None:
        if not 1 <= self.min_segments <= self.max_segments:
            raise ValueError(f"need 1 ≤ min_segments ≤ max_segments, got {self.min_segments}, {self.max_segments}")
        if self.min_length < 1 or self.hold < 1 or self.speed_window < 1:
            raise ValueError("min_length, hold and speed_window must be ≥ 1")


@dataclass(frozen=True)
class Event:
    kind: str
    frame: int  # the first frame after the change
    strength: float = 1.0  # ranks events of one kind (speed minima: how deep)


@dataclass
class Segmentation:
    """One episode cut into subtasks: ``starts[k]`` is subtask k's first frame, ``texts[k]`` its instruction,
    ``ends[k]`` the event that closed it (``"end"`` for the last), ``template`` whether every template event
    was found (None: no template)."""

    starts: list[int]
    texts: list[str]
    ends: list[str]
    length: int
    template: bool | None = None
    events: list[Event] = field(default_factory=list)

    def labels(self) -> np.ndarray:
        """The subtask ordinal of every frame, int64 [T]."""
        out = np.zeros(self.length, dtype=np.int64)
        for k, s in enumerate(self.starts):
            out[s:] = k
        return out

    def boundary_frames(self) -> list[int]:
        """Each subtask's last frame (its subgoal)."""
        return [s - 1 for s in self.starts[1:]] + [self.length - 1]

    def to_dict(self) -> dict[str, Any]:
        return {"starts": self.starts, "texts": self.texts, "ends": self.ends, "length": self.length,
                "template": self.template, "events": [[e.kind, e.frame] for e in self.events]}


# ---------------------------------------------------------------------------------------------- events
def _runs_start(flags: np.ndarray, hold: int) -> list[int]:
    """Frames where ``flags`` turns True and stays True for ``hold`` frames."""
    out = []
    t, n = 1, len(flags)
    while t < n:
        if flags[t] and not flags[t - 1] and flags[t : t + hold].all() and t + hold <= n:
            out.append(t)
            t += hold
        else:
            t += 1
    return out


def _gripper_events(command: np.ndarray, s: SegmentSettings) -> list[Event]:
    lo, hi = float(command.min()), float(command.max())
    if hi - lo < s.grip_min_range:
        return []
    closed = command > (lo + hi) / 2
    # debounce: a side counts only once it holds for `hold` frames
    events = []
    state = bool(closed[0])
    t = 1
    while t < len(closed):
        if bool(closed[t]) != state and (closed[t : t + s.hold] == closed[t]).all():
            state = bool(closed[t])
            events.append(Event("grip_close" if state else "grip_open", t))
            t += s.hold
        else:
            t += 1
    return events


def hand_speed(hand: np.ndarray, window: int) -> np.ndarray:
    """Moving-average speed [T] of the hand positions [T, 3] (frame t: the step t-1 → t; frame 0 copies frame 1)."""
    if len(hand) < 2:
        return np.zeros(len(hand))
    step = np.linalg.norm(np.diff(hand, axis=0), axis=1)
    speed = np.concatenate([step[:1], step])
    if window > 1:
        kernel = np.ones(window) / window
        pad = window // 2
        speed = np.convolve(np.pad(speed, (pad, window - 1 - pad), mode="edge"), kernel, mode="valid")
    return speed


def detect_events(hand: np.ndarray, gripper: np.ndarray | None = None, obj: np.ndarray | None = None,
                  settings: SegmentSettings | None = None) -> list[Event]:
    """Every event of one episode, sorted by frame.

    ``hand`` [T, 3] end-effector positions (z up), ``gripper`` [T] the gripper command (larger = more
    closed), ``obj`` [T, 3] the object's position where the simulator records it."""
    s = settings or SegmentSettings()
    hand = np.asarray(hand, dtype=np.float64)
    if hand.ndim != 2 or hand.shape[1] < 3:
        raise ValueError(f"hand positions must be [T, 3], got shape {hand.shape}")
    hand = hand[:, :3]
    t_len = len(hand)
    events: list[Event] = []
    if gripper is not None:
        gripper = np.asarray(gripper, dtype=np.float64).reshape(-1)
        if len(gripper) != t_len:
            raise ValueError(f"gripper has {len(gripper)} frames, hand has {t_len}")
        events += _gripper_events(gripper, s)
    if obj is not None:
        obj = np.asarray(obj, dtype=np.float64)
        if obj.shape != (t_len, 3):
            raise ValueError(f"object positions must be [T, 3] = [{t_len}, 3], got {obj.shape}")
        moved = np.flatnonzero(np.linalg.norm(obj - obj[0], axis=1) > s.object_move_m)
        if len(moved):
            events.append(Event("object_moves", int(moved[0])))
        lifted = np.flatnonzero(obj[:, 2] - obj[0, 2] > s.object_lift_m)
        if len(lifted):
            events.append(Event("object_lifted", int(lifted[0])))
    vz = np.concatenate([[0.0], np.diff(hand[:, 2])])
    events += [Event("descend", t) for t in _runs_start(vz < -s.descend_speed, s.hold)]
    speed = hand_speed(hand, s.speed_window)
    median = float(np.median(speed)) if t_len else 0.0
    if median > 0:
        for t in range(1, t_len - 1):
            if speed[t] <= speed[t - 1] and speed[t] < speed[t + 1] and speed[t] < s.speed_min_ratio * median:
                events.append(Event("speed_min", t, 1.0 - speed[t] / median))
    return sorted(events, key=lambda e: (e.frame, e.kind))


# ---------------------------------------------------------------------------------------------- cutting
def segment_with_template(events: Sequence[Event], length: int, template: Sequence[tuple[str, str]],
                          settings: SegmentSettings | None = None) -> Segmentation:
    """Cut by a template: subtask k ends at the first ``template[k][1]`` event at least ``min_length``
    frames after subtask k's start (and leaving ``min_length`` frames after it); ``"a|b"`` takes an ``a``
    event if there is one, else a ``b``. A missing event merges subtask k into k+1 ("a, then b")."""
    s = settings or SegmentSettings()
    if not template or template[-1][1] != END:
        raise ValueError(f"a template is a list of (text, end event) ending with {END!r}; got {list(template)}")
    for text, kinds in template:
        for kind in kinds.split("|"):
            if kind not in (*EVENT_KINDS, END):
                raise ValueError(f"template event {kind!r} for {text!r}; accepted: {', '.join((*EVENT_KINDS, END))} "
                                 f"(alternatives as 'a|b')")
    starts, texts, ends = [0], [], []
    pending: list[str] = []
    complete = True
    for text, kinds in template[:-1]:
        lo, hi = starts[-1] + s.min_length, length - s.min_length
        hit = None
        for kind in kinds.split("|"):  # alternatives in order of preference
            hit = next((e for e in events if e.kind == kind and lo <= e.frame <= hi), None)
            if hit is not None:
                break
        pending.append(text)
        if hit is None:
            complete = False
            continue
        starts.append(hit.frame)
        texts.append(", then ".join(pending))
        ends.append(hit.kind)
        pending = []
    texts.append(", then ".join([*pending, template[-1][0]]))
    ends.append(END)
    return Segmentation(starts, texts, ends, length, complete, list(events))


_DIRECTIONS = (("right", "left"), ("forward", "backward"), ("up", "down"))


def _motion_words(hand: np.ndarray, start: int, stop: int) -> str:
    d = hand[min(stop, len(hand) - 1), :3] - hand[start, :3]
    axis = int(np.argmax(np.abs(d)))
    if abs(d[axis]) < 0.02:
        return "hold the arm still"
    return f"move the arm {_DIRECTIONS[axis][0 if d[axis] > 0 else 1]}"


def _generic_text(end: str, previous: str | None, hand: np.ndarray, start: int, stop: int) -> str:
    if end == "grip_close":
        return "reach and grasp the object"
    if end == "grip_open":
        return "move the object and release it"
    if end in ("object_moves", "object_lifted") and previous == "grip_close":
        return "lift the object"
    if end == "object_moves":
        return "reach the object"
    if end == "object_lifted":
        return "lift the object"
    if end == END and previous == "grip_close":
        return "carry the object to the goal"
    if end == END and previous in ("object_moves", "object_lifted"):
        return "move the object to the goal"
    return _motion_words(hand, start, stop)


def segment_generic(events: Sequence[Event], hand: np.ndarray, settings: SegmentSettings | None = None) -> Segmentation:
    """Cut without a template (see the module docstring)."""
    s = settings or SegmentSettings()
    length = len(hand)
    ranked = sorted(events, key=lambda e: (-_PRIORITY[e.kind], -e.strength, e.frame))
    chosen: list[Event] = []

    def fits(e: Event) -> bool:
        if not s.min_length <= e.frame <= length - s.min_length:
            return False
        return all(abs(e.frame - c.frame) >= s.min_length for c in chosen)

    for e in ranked:  # strong events always (up to the cap), weak ones only to reach min_segments
        if len(chosen) >= s.max_segments - 1:
            break
        if _PRIORITY[e.kind] < 2 and len(chosen) + 1 >= s.min_segments:
            break
        if fits(e):
            chosen.append(e)
    chosen.sort(key=lambda e: e.frame)
    starts = [0, *[e.frame for e in chosen]]
    ends = [*[e.kind for e in chosen], END]
    texts, prev = [], None
    for k, end in enumerate(ends):
        stop = starts[k + 1] if k + 1 < len(starts) else length - 1
        texts.append(_generic_text(end, prev, hand, starts[k], stop))
        prev = end
    return Segmentation(starts, texts, ends, length, None, list(events))


def segment_episode(hand: np.ndarray, gripper: np.ndarray | None = None, obj: np.ndarray | None = None,
                    template: Sequence[tuple[str, str]] | None = None,
                    settings: SegmentSettings | None = None) -> Segmentation:
    """Events, then a template cut when a template is given, else the generic cut."""
    s = settings or SegmentSettings()
    events = detect_events(hand, gripper, obj, s)
    if template:
        return segment_with_template(events, len(hand), template, s)
    return segment_generic(events, np.asarray(hand, dtype=np.float64), s)


# ---------------------------------------------------------------------------------------------- LLM naming
_EVENT_PHRASES = {"grip_close": "the gripper closes", "grip_open": "the gripper opens",
                  "object_moves": "the object starts moving", "object_lifted": "the object is lifted",
                  "descend": "the hand starts moving down", "speed_min": "the hand slows to a stop", END: "the episode ends"}


def describe_segments(seg: Segmentation, hand: np.ndarray, gripper: np.ndarray | None) -> list[str]:
    """One line per segment for an LLM: duration, hand displacement (cm per axis), gripper, end event."""
    lines = []
    for k, start in enumerate(seg.starts):
        stop = seg.starts[k + 1] - 1 if k + 1 < len(seg.starts) else seg.length - 1
        d = 100 * (hand[stop, :3] - hand[start, :3])
        grip = ""
        if gripper is not None:
            grip = f", gripper command {float(np.mean(gripper[start:stop + 1])):+.1f} on average"
        end = _EVENT_PHRASES.get(seg.ends[k], seg.ends[k].replace("_", " "))
        lines.append(f"{k + 1}) {stop - start + 1} frames; the hand moves x {d[0]:+.0f} cm (right +), y {d[1]:+.0f} cm "
                     f"(forward +), z {d[2]:+.0f} cm (up +){grip}; it ends when {end}.")
    return lines


def naming_prompt(instruction: str, descriptions: Sequence[str]) -> list[dict[str, Any]]:
    n = len(descriptions)
    text = (f"A robot demonstration of the task \"{instruction}\" was cut into {n} consecutive segments:\n"
            + "\n".join(descriptions)
            + f"\nName each segment with a short imperative instruction (at most 8 words) that a robot policy "
              f"could follow, e.g. \"pull the drawer open\". Answer with a JSON list of exactly {n} strings.")
    return [{"role": "user", "content": text}]


def parse_names(text: str, n: int) -> list[str] | None:
    """The JSON list of ``n`` short strings in a model's answer, or None when it holds no such list."""
    match = re.search(r"\[.*\]", text or "", flags=re.S)
    if not match:
        return None
    try:
        names = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(names, list) or len(names) != n:
        return None
    out = [str(x).strip().rstrip(".").lower() for x in names if isinstance(x, str)]
    if len(out) != n or any(not x or len(x) > 80 for x in out):
        return None
    return out


def llm_names(backend: Any, requests: Mapping[Any, tuple[str, list[str]]]) -> dict[Any, list[str] | None]:
    """Names from an OpenAI-compatible backend (``atlasva.policy.backends.OpenAIBackend``) for each
    ``key -> (instruction, segment descriptions)``; a malformed answer gives None for that key (the caller
    keeps its own names)."""
    keys = list(requests)
    if not keys:
        return {}
    outputs = backend.generate([naming_prompt(*requests[k]) for k in keys])
    return {k: parse_names(o.text, len(requests[k][1])) for k, o in zip(keys, outputs)}
