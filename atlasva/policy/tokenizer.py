"""A small byte-level BPE tokenizer trained locally on the environments' text, with Qwen's special tokens.

The tiny default policy needs a tokenizer that (a) exists without any download, (b) encodes every
string losslessly (byte-level BPE, so text the model writes or an env prints always round-trips), and
(c) carries the special tokens and chat template of Qwen2.5-VL, so the same code path serves the tiny
model and real Qwen2.5-VL checkpoints. :func:`build_tokenizer` trains it on :func:`env_corpus` (system
prompts, observations and well-formed answers of every registered env, in every reasoning format, plus
plain English) and wraps it as a :class:`transformers.PreTrainedTokenizerFast`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

log = logging.getLogger(__name__)

#: Qwen2.5's special tokens, in Qwen's id order (here they take ids 0..13).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

#: Qwen2.5's pre-tokenisation regex (split before byte-level mapping).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Qwen2.5-VL's chat template (images and videos become <|vision_start|><|image_pad|><|vision_end|>;
#: a default system message is added when the conversation has none).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_ENGLISH = """\
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
I think I should move toward the goal and avoid the holes. The box is to the left of the player.
The target is above the player, in the same column. The goal is below and to the right.
I see the current state. I plan to move up, then right. The state will change after my actions.
abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789
! " # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \\ ] ^ _ ` { | } ~
Yes, no, maybe. First, second, third. Left, right, up, down, ahead, behind, near, far.
"""


#: The envs whose text trains the tiny tokenizer: fixed, and all in the core install, so the tokenizer (and
#: every tiny-model result) is the same whichever extras (e.g. MuJoCo for manipulation) are installed.
CORPUS_ENVS = ("frozenlake", "navigation", "sokoban")  # the order of envs.names() without manipulation


def env_corpus(seeds: tuple[int, int] = (8, 2), max_turns: int = 4) -> Iterator[str]:
    """Text the registered environments write and the answers a policy gives, in every format.

    ``seeds`` = (episodes from text observations, episodes from image observations) per env; each
    turn yields a well-formed answer in every reasoning format. Deterministic (fixed seeds). An env
    that cannot be built with its defaults is skipped with a log line, so a broken env never blocks
    building the tiny policy.
    """
    from atlasva import envs, formats

    yield _ENGLISH
    for fmt in formats.FORMATS:
        for acts in (["Up"], ["Left", "Down"], ["Right", "Right", "Up"]):
            yield formats.answer(acts, fmt)
        yield formats.instructions(fmt, ",", 3)
        yield formats.instructions(fmt, "|", 2)
    for name in CORPUS_ENVS:
        try:
            for fmt in formats.FORMATS:
                env = envs.make(name, format=fmt, obs_mode="text")
                yield env.system_prompt()
                env.close()
            for obs_mode, n_seeds in zip(("text", "vision"), seeds):
                env = envs.make(name, format="grounding_world_modeling", obs_mode=obs_mode)
                try:
                    for seed in range(n_seeds):
                        yield from _episode_text(env, seed, max_turns)
                finally:
                    env.close()
        except Exception as exc:  # any env failure just skips that env
            log.warning("tokenizer corpus: skipping env %r (%s: %s)", name, type(exc).__name__, exc)


def _episode_text(env: Any, seed: int, max_turns: int) -> Iterator[str]:
    from atlasva import formats

    obs, info = env.reset(seed=seed)
    yield obs["text"]
    try:
        plan = list(env.solve())
    except Exception:  # stochastic envs may not solve; fall back to one legal action
        plan = list(getattr(env, "action_names", ())[:1])
    per_turn = max(1, int(getattr(env, "max_actions_per_turn", 1) or 1))
    sep = getattr(env, "action_sep", ",")
    for _ in range(max_turns):
        if not plan:
            break
        acts, plan = plan[:per_turn], plan[per_turn:]
        before = _relations_text(env, info)
        text = ""
        for fmt in formats.FORMATS:
            text = formats.answer(acts, fmt, action_sep=sep, observation=before, prediction=before)
            yield text
        obs, _, terminated, truncated, info = env.step(text)  # the last format: grounding_world_modeling
        yield obs["text"]
        yield _relations_text(env, info)
        if terminated or truncated:
            break


def _relations_text(env: Any, info: dict[str, Any]) -> str:
    from atlasva import formats

    try:
        return formats.describe(env.relations(info["state"]))
    except Exception:  # the world-model text is optional corpus material
        return ""


def train_bpe(corpus: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """A byte-level BPE (Qwen2.5's pre-tokenizer) trained on ``corpus``; special tokens take ids 0..13."""
    if vocab_size < 256 + len(QWEN_SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is too small; byte-level BPE needs at least 270")
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return tok


def wrap_tokenizer(tok: Tokenizer) -> Any:
    """Wrap a trained ``tokenizers.Tokenizer`` as a ``transformers.PreTrainedTokenizerFast`` (Qwen conventions)."""
    from transformers import PreTrainedTokenizerFast

    extra = [t for t in QWEN_SPECIAL_TOKENS if t not in (EOS_TOKEN, PAD_TOKEN)]
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=extra,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
        padding_side="left",
        split_special_tokens=False,
    )
    hf.chat_template = QWEN_VL_CHAT_TEMPLATE
    return hf


def build_tokenizer(vocab_size: int = 1024, corpus: Iterable[str] | None = None) -> Any:
    """Train and wrap the tiny policy's tokenizer (deterministic for a given corpus)."""
    return wrap_tokenizer(train_bpe(env_corpus() if corpus is None else corpus, vocab_size))


def special_token_ids(tokenizer: Any, keep: Iterable[str] = (EOS_TOKEN,)) -> list[int]:
    """Ids of every special / added-special token except ``keep`` (what generation must never sample)."""
    keep_set = set(keep)
    ids: set[int] = set()
    for idx, added in tokenizer.added_tokens_decoder.items():
        if getattr(added, "special", True) and str(added) not in keep_set:
            ids.add(int(idx))
    for name in getattr(tokenizer, "all_special_tokens", []):
        if name not in keep_set:
            tid = tokenizer.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid >= 0:
                ids.add(tid)
    for name in (IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END, "<|vision_pad|>"):
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id and name not in keep_set:
            ids.add(tid)
    return sorted(ids)
