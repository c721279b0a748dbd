"""Reasoning formats: templates, lenient/strict parsing, answer(), relations and the world-model F1."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlasva import formats
from atlasva.formats import FORMATS, Vocabulary, answer, describe, parse, parse_relations, relation_f1

VOCAB = Vocabulary.of(("box", "target"), ("above", "below", "same row as", "left of", "right of", "same column as"), ("player",))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_answer_parses_back_strict_and_lenient(fmt):
    text = answer(["Up", "Left"], fmt, observation="box is above player.", prediction="box is left of player.")
    for strict in (False, True):
        p = parse(text, fmt, strict=strict)
        assert p.format_valid, (fmt, strict, p.error)
        assert p.actions == ["Up", "Left"]
    if formats.has_field(fmt, "observation"):
        assert parse(text, fmt).fields["observation"] == "box is above player."


def test_templates_exactly_as_designed():
    assert answer(["Up"], "no_think") == "<answer>Up</answer>"
    t = answer(["Up"], "grounding_world_modeling", observation="o", reasoning="r", prediction="p")
    assert t == "<think><observation>o</observation><reasoning>r</reasoning><prediction>p</prediction></think><answer>Up</answer>"
    assert answer(["move_forward", "turn_left"], "no_think", action_sep="|") == "<answer>move_forward | turn_left</answer>"


def test_lenient_tolerates_case_whitespace_and_extra_text():
    p = parse("Sure! <THINK> go </THINK>\n\n  <Answer> up ,  LEFT </Answer> done", "free_think")
    assert p.format_valid and p.actions == ["up", "LEFT"]
    assert not parse("Sure! <THINK> go </THINK><Answer>up</Answer> done", "free_think", strict=True).format_valid


def test_missing_answer_runs_nothing_and_missing_think_is_invalid_but_runs():
    p = parse("<think>hmm</think> Up", "free_think")
    assert not p.format_valid and p.actions == [] and "answer" in p.error
    p = parse("<answer>Up</answer>", "free_think")
    assert not p.format_valid and p.actions == ["Up"]  # lenient: actions still taken
    assert parse("<answer>Up</answer>", "free_think", strict=True).actions == []


def test_grounding_requires_nested_tags_in_order():
    ok = "<think><observation>a</observation><reasoning>b</reasoning></think><answer>Up</answer>"
    assert parse(ok, "grounding").format_valid
    outside = "<observation>a</observation><think><reasoning>b</reasoning></think><answer>Up</answer>"
    assert not parse(outside, "grounding").format_valid


def test_max_actions_caps_and_separator():
    assert parse("<answer>a,b,c,d</answer>", "no_think", max_actions=3).actions == ["a", "b", "c"]
    assert parse("<answer>pick(1,2,3) | place(4,5,6)</answer>", "no_think", action_sep="|").actions == [
        "pick(1,2,3)",
        "place(4,5,6)",
    ]


def test_unknown_format_and_non_text():
    with pytest.raises(ValueError, match="accepted"):
        parse("x", "cot")
    assert not parse(None, "no_think").format_valid
    assert not parse("<answer>" + "a" * (formats.MAX_TEXT_CHARS + 1) + "</answer>", "no_think").format_valid


@settings(max_examples=300, deadline=None)
@given(text=st.text(), fmt=st.sampled_from(list(FORMATS)), strict=st.booleans())
def test_any_text_is_a_normal_event(text, fmt, strict):
    p = parse(text, fmt, strict=strict, max_actions=5)
    assert isinstance(p.format_valid, bool)
    assert len(p.actions) <= 5
    assert p.format_valid or p.error


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "<observation>", "</observation>",
                                       "<prediction>", "</prediction>", "Up", ",", " ", "<", ">", "\u00e9", "\n"]), max_size=40),
       fmt=st.sampled_from(list(FORMATS)))
def test_tag_soup_never_crashes(parts, fmt):
    text = "".join(parts)
    p = parse(text, fmt)
    assert isinstance(p.actions, list)
    parse_relations(text, VOCAB)


def test_describe_parse_identity_and_f1():
    rels = [["box", "above", "player"], ["box", "left of", "player"], ["target", "same row as", "player"],
            ["target", "same column as", "player"]]
    text = describe(rels)
    assert text == ("box is above player. box is left of player. target is same row as player. "
                    "target is same column as player.")
    back = parse_relations(text, VOCAB)
    assert [list(r) for r in back] == rels
    assert relation_f1(back, rels) == 1.0


def test_parse_relations_free_text():
    text = "The box is above and left of the player; the target is right of the player.\nnothing here"
    assert parse_relations(text, VOCAB) == [("box", "above", "player"), ("box", "left of", "player"),
                                            ("target", "right of", "player")]


def test_relation_f1_hand_cases():
    truth = [["box", "above", "player"], ["box", "left of", "player"]]
    # one right, one wrong: precision 1/2, recall 1/2 -> F1 0.5
    assert relation_f1([["box", "above", "player"], ["box", "right of", "player"]], truth) == pytest.approx(0.5)
    # one right only: precision 1, recall 1/2 -> F1 2/3
    assert relation_f1([["box", "above", "player"]], truth) == pytest.approx(2 / 3)
    assert relation_f1([], truth) == 0.0
    assert relation_f1([], []) == 1.0
    # multisets: a duplicated prediction counts once against a single truth
    assert relation_f1([["box", "above", "player"]] * 2, [["box", "above", "player"]]) == pytest.approx(2 / 3)
