"""Reasoning formats: templates, parsing, the format reward and the rule-based world-model reward.

Five templates (as in the VAGEN paper)::

    no_think                  <answer>A</answer>
    free_think                <think>…</think><answer>A</answer>
    grounding                 <think><observation>…</observation><reasoning>…</reasoning></think><answer>A</answer>
    world_modeling            <think><reasoning>…</reasoning><prediction>…</prediction></think><answer>A</answer>
    grounding_world_modeling  <think><observation>…</observation><reasoning>…</reasoning>
                              <prediction>…</prediction></think><answer>A</answer>

Parsing never raises on model text: anything (empty, megabytes, tag soup) yields a
:class:`Parsed` with ``format_valid=False`` where it does not fit. Tags are located with plain
string search (no backtracking regex), so the cost is linear in the text length.

The world-model reward needs no LLM judge: an environment states the truth as relation triples
``[subject, relation, object]`` (``env.relations(state)``), :func:`describe` writes them as text
and :func:`parse_relations` reads free text back into triples; the score is the F1 of the
multisets of triples.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# name -> the tags inside <think> (None = no <think> block at all)
FORMATS: dict[str, tuple[str, ...] | None] = {
    "no_think": None,
    "free_think": (),
    "grounding": ("observation", "reasoning"),
    "world_modeling": ("reasoning", "prediction"),
    "grounding_world_modeling": ("observation", "reasoning", "prediction"),
}

#: Where an observation's text shows an image: one per image, in order (envs, memory and processor share it).
IMAGE_PLACEHOLDER = "<image>"

#: Texts longer than this are format-invalid and run nothing (protects envs from megabyte outputs).
MAX_TEXT_CHARS = 32768

_FORMAT_INSTRUCTIONS = {
    "no_think": "Give only your action(s), inside <answer>...</answer>.",
    "free_think": "First think step by step inside <think>...</think>, then give your action(s) "
    "inside <answer>...</answer>.",
    "grounding": "Inside <think>...</think>, first describe the current state in <observation>...</observation>, "
    "then reason in <reasoning>...</reasoning>; then give your action(s) inside <answer>...</answer>.",
    "world_modeling": "Inside <think>...</think>, reason in <reasoning>...</reasoning>, then predict the state "
    "after your actions in <prediction>...</prediction>; then give your action(s) inside <answer>...</answer>.",
    "grounding_world_modeling": "Inside <think>...</think>, describe the current state in "
    "<observation>...</observation>, reason in <reasoning>...</reasoning>, and predict the state after your "
    "actions in <prediction>...</prediction>; then give your action(s) inside <answer>...</answer>.",
}


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"unknown reasoning format {name!r}; accepted: {', '.join(FORMATS)}")
    return name


def required_tags(fmt: str) -> tuple[str, ...]:
    """Every tag the format needs, outermost first (``answer`` last)."""
    inner = FORMATS[check_format(fmt)]
    return ("answer",) if inner is None else ("think", *inner, "answer")


def has_field(fmt: str, tag: str) -> bool:
    inner = FORMATS[check_format(fmt)]
    return inner is not None and tag in inner


@dataclass
class Parsed:
    """What a model's text said. ``actions`` are the raw action strings (not yet validated by the env)."""

    format_valid: bool
    actions: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)  # think / observation / reasoning / prediction
    answer: str | None = None
    error: str = ""  # why the format is invalid ("" when valid)


def _find_tag(text: str, lower: str, tag: str, start: int = 0) -> tuple[int, int, str] | None:
    """First ``<tag>…</tag>`` at or after ``start`` (case-insensitive): (open_pos, end_pos, content)."""
    open_t, close_t = f"<{tag}>", f"</{tag}>"
    i = lower.find(open_t, start)
    if i < 0:
        return None
    j = lower.find(close_t, i + len(open_t))
    if j < 0:
        return None
    return i, j + len(close_t), text[i + len(open_t) : j]


def split_actions(answer: str, sep: str, max_actions: int | None) -> list[str]:
    parts = [p.strip() for p in answer.split(sep)]
    parts = [p for p in parts if p]
    return parts if max_actions is None else parts[:max_actions]


def parse(
    text: object,
    fmt: str = "free_think",
    *,
    action_sep: str = ",",
    max_actions: int | None = None,
    strict: bool = False,
) -> Parsed:
    """Parse a model's text under a reasoning format.

    Lenient (default): tolerant of whitespace, case and text outside the tags; the format is valid
    when every tag of the template is present (nested inside ``<think>`` where the template says so)
    and the answer is non-empty. Actions are taken from the first ``<answer>`` block even when other
    tags are missing; without ``<answer>`` nothing runs.
    Strict: the whole text (modulo surrounding whitespace) must match the template exactly; otherwise
    the format is invalid and nothing runs.
    """
    check_format(fmt)
    if not isinstance(text, str):
        return Parsed(False, error=f"model output is {type(text).__name__}, not text")
    if len(text) > MAX_TEXT_CHARS:
        return Parsed(False, error=f"output has {len(text)} characters (limit {MAX_TEXT_CHARS})")
    return _parse_strict(text, fmt, action_sep, max_actions) if strict else _parse_lenient(
        text, fmt, action_sep, max_actions
    )


def _parse_lenient(text: str, fmt: str, sep: str, max_actions: int | None) -> Parsed:
    lower = text.lower()
    ans = _find_tag(text, lower, "answer")
    if ans is None:
        return Parsed(False, error="no <answer>...</answer> block")
    answer = ans[2].strip()
    actions = split_actions(answer, sep, max_actions)
    fields: dict[str, str] = {}
    errors: list[str] = []
    inner = FORMATS[fmt]
    if inner is not None:
        think = _find_tag(text, lower, "think")
        if think is None or think[0] > ans[0]:
            errors.append("no <think>...</think> block before <answer>")
        else:
            fields["think"] = think[2].strip()
            t_text, t_lower = think[2], lower[think[0] + 7 : think[1] - 8]
            pos = 0
            for tag in inner:
                found = _find_tag(t_text, t_lower, tag, pos)
                if found is None:
                    errors.append(f"no <{tag}>...</{tag}> inside <think>")
                    continue
                fields[tag] = found[2].strip()
                pos = found[1]
    if not actions:
        errors.append("empty <answer>")
    return Parsed(not errors, actions, fields, answer, "; ".join(errors))


def _strict_pattern(fmt: str) -> re.Pattern[str]:
    inner = FORMATS[fmt]
    body = r"<answer>([^<]*)</answer>"
    if inner is not None:
        think = "".join(rf"\s*<{t}>([^<]*)</{t}>" for t in inner) if inner else r"([^<]*)"
        body = rf"<think>{think}\s*</think>\s*" + body
    return re.compile(rf"\s*{body}\s*", re.DOTALL)


_STRICT = {name: _strict_pattern(name) for name in FORMATS}


def _parse_strict(text: str, fmt: str, sep: str, max_actions: int | None) -> Parsed:
    m = _STRICT[fmt].fullmatch(text)
    if m is None:
        return Parsed(False, error=f"text does not match the {fmt} template exactly")
    groups = list(m.groups())
    answer = groups[-1].strip()
    inner = FORMATS[fmt]
    fields: dict[str, str] = {}
    if inner is not None:
        if inner:
            fields.update({t: g.strip() for t, g in zip(inner, groups[:-1])})
        else:
            fields["think"] = groups[0].strip()
    actions = split_actions(answer, sep, max_actions)
    if not actions:
        return Parsed(False, [], fields, answer, "empty <answer>")
    return Parsed(True, actions, fields, answer)


def answer(
    actions: Sequence[str],
    fmt: str = "free_think",
    *,
    action_sep: str = ",",
    observation: str = "",
    reasoning: str = "",
    prediction: str = "",
    think: str = "",
) -> str:
    """A well-formed answer in ``fmt`` for the given actions (solver baselines, SFT data, `envs play`)."""
    inner = FORMATS[check_format(fmt)]
    joiner = f"{action_sep} " if action_sep == "," else f" {action_sep} "
    ans = f"<answer>{joiner.join(actions)}</answer>"
    if inner is None:
        return ans
    if not inner:
        return f"<think>{think or 'I will ' + joiner.join(actions) + '.'}</think>{ans}"
    values = {
        "observation": observation or "I see the current state.",
        "reasoning": reasoning or "I plan to " + joiner.join(actions) + ".",
        "prediction": prediction or "The state will change.",
    }
    return "<think>" + "".join(f"<{t}>{values[t]}</{t}>" for t in inner) + "</think>" + ans


def instructions(fmt: str, action_sep: str = ",", max_actions: int | None = None) -> str:
    """System-prompt text that explains the format to the model."""
    text = _FORMAT_INSTRUCTIONS[check_format(fmt)]
    if max_actions:
        text += f" You may give up to {max_actions} action(s), separated by '{action_sep}'."
    text += " Example: " + answer(["<action>"], fmt, action_sep=action_sep)
    return text


# --------------------------------------------------------------------------- world model


Relation = tuple[str, str, str]


def describe(relations: Iterable[Sequence[str]]) -> str:
    """Write relation triples as text: ``"box is above player. box is left of player."``."""
    return " ".join(f"{s} is {r} {o}." for s, r, o in relations)


def _compile_terms(terms: Iterable[str]) -> list[tuple[str, re.Pattern[str]]]:
    # Longest first so that "same row as" wins over "row", and word boundaries so "left" ≠ "leftover".
    uniq = sorted(set(terms), key=len, reverse=True)
    return [(t, re.compile(r"(?<![a-z0-9_])" + re.escape(t.lower()) + r"(?![a-z0-9_])")) for t in uniq]


@dataclass(frozen=True)
class Vocabulary:
    """The terms an env's relations use: who can be a subject or object, and the relation phrases."""

    subjects: tuple[str, ...]
    relations: tuple[str, ...]
    objects: tuple[str, ...]

    @classmethod
    def of(cls, subjects: Iterable[str], relations: Iterable[str], objects: Iterable[str]) -> Vocabulary:
        return cls(tuple(subjects), tuple(relations), tuple(objects))


_CLAUSE_SPLIT = re.compile(r"[.;\n]")


def parse_relations(text: str, vocabulary: Vocabulary, max_relations: int = 64) -> list[Relation]:
    """Read relation triples from free text, clause by clause (clauses end at ``.``, ``;`` or a
    newline). In a clause, every relation phrase pairs the first subject term before the first
    relation with the first object term after the last one, so both "box is above player" and
    "box is above and left of player" read as expected."""
    if not isinstance(text, str) or not text:
        return []
    rel_terms = _compile_terms(vocabulary.relations)
    subj_terms = _compile_terms(vocabulary.subjects)
    obj_terms = _compile_terms(vocabulary.objects)
    out: list[Relation] = []
    for clause in _CLAUSE_SPLIT.split(text.lower()[:MAX_TEXT_CHARS]):
        rels = _all_matches(clause, rel_terms)
        if not rels:
            continue
        subj = _first_match(clause[: rels[0][1]], subj_terms)
        obj = _first_match(clause[rels[-1][2] :], obj_terms)
        if subj is None or obj is None:
            continue
        for term, _, _ in rels:
            out.append((subj[0], term, obj[0]))
        if len(out) >= max_relations:
            return out[:max_relations]
    return out


def _all_matches(text: str, terms: list[tuple[str, re.Pattern[str]]]) -> list[tuple[str, int, int]]:
    """Non-overlapping matches in order of position; a longer term wins an overlap."""
    found = [(t, m.start(), m.end()) for t, pat in terms for m in pat.finditer(text)]
    found.sort(key=lambda x: (x[1], -(x[2] - x[1])))
    out: list[tuple[str, int, int]] = []
    for item in found:
        if not out or item[1] >= out[-1][2]:
            out.append(item)
    return out


def _first_match(text: str, terms: list[tuple[str, re.Pattern[str]]]) -> tuple[str, int, int] | None:
    matches = _all_matches(text, terms)
    return matches[0] if matches else None


def relation_f1(predicted: Iterable[Sequence[str]], truth: Iterable[Sequence[str]]) -> float:
    """F1 of two multisets of triples. Both empty → 1.0 (nothing to say, nothing said)."""
    p = Counter(tuple(x) for x in predicted)
    t = Counter(tuple(x) for x in truth)
    if not p and not t:
        return 1.0
    hits = sum((p & t).values())
    if hits == 0:
        return 0.0
    precision, recall = hits / sum(p.values()), hits / sum(t.values())
    return 2 * precision * recall / (precision + recall)


def world_model_score(text: str, truth: Iterable[Sequence[str]], vocabulary: Vocabulary) -> float:
    return relation_f1(parse_relations(text, vocabulary), truth)
