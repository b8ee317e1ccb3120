"""Streaming text deltas: never a broken UTF-8 character, never text a stop string cuts.

Pure logic: tokens here are single bytes (the worst case of a byte-level BPE),
decoded the way a byte-level tokenizer does, so no model is needed.
"""

from __future__ import annotations

import itertools
import random

from inference.engine import Event, FinishEvent, GenerationParams, TokenEvent
from inference.sequence_state import SequenceState

EOS = 256


def _decode(ids: list[int]) -> str:
    return bytes(i for i in ids if i != EOS).decode("utf-8", errors="replace")


def _run(text: str, *, eos: bool = False, **kwargs: object) -> tuple[list[str], FinishEvent]:
    events: list[Event] = []
    prompt = b"Q:"
    state = SequenceState(
        params=GenerationParams(
            prompt=prompt.decode(),
            prompt_ids=tuple(prompt),
            max_new_tokens=int(kwargs.pop("max_new_tokens", 100)),  # type: ignore[call-overload]
            **kwargs,  # type: ignore[arg-type]
        ),
        sink=events.append,
        handle=None,
        decode=_decode,
        eos_ids=frozenset({EOS}),
        context_length=1000,
        submitted_at=0.0,
    )
    for token in [*text.encode(), *([EOS] if eos else [])]:
        state.accept(token)
        if state.done:
            break
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    deltas = [e.text for e in events if isinstance(e, TokenEvent)]
    return deltas, finish


def test_multibyte_characters_are_never_split() -> None:
    text = " café ☕ naïve 日本"
    deltas, finish = _run(text, eos=True)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == finish.text == text
    assert finish.reason == "eos"
    assert finish.generated_tokens == len(text.encode())


def test_stop_string_split_over_tokens_is_never_streamed() -> None:
    deltas, finish = _run("abc END xyz", stop=(" END",))
    assert finish.reason == "stop"
    assert finish.text == "abc"
    assert "".join(deltas) == "abc"


def test_earliest_stop_string_wins() -> None:
    _, finish = _run("one two three", stop=("three", "two"))
    assert (finish.reason, finish.text) == ("stop", "one ")


def test_held_back_prefix_is_flushed_at_length_and_at_eos() -> None:
    deltas, finish = _run("ab EN", stop=(" END",), max_new_tokens=5)
    assert finish.reason == "length" and "".join(deltas) == finish.text == "ab EN"
    deltas, finish = _run("ab EN", stop=(" END",), eos=True)
    assert finish.reason == "eos" and "".join(deltas) == finish.text == "ab EN"


def test_min_new_tokens_ignores_eos_until_reached() -> None:
    events: list[Event] = []
    state = SequenceState(
        params=GenerationParams(prompt="x", prompt_ids=(120,), max_new_tokens=5, min_new_tokens=2),
        sink=events.append,
        handle=None,
        decode=_decode,
        eos_ids=frozenset({EOS}),
        context_length=1000,
        submitted_at=0.0,
    )
    assert state.suppress_eos
    state.accept(ord("a"))
    state.accept(ord("b"))
    assert not state.suppress_eos
    state.accept(EOS)
    assert state.done and isinstance(events[-1], FinishEvent) and events[-1].reason == "eos"


# Multi-byte tokens, as a byte-level BPE has them: each id names its bytes.
PROMPT_ID = 100  # the prompt's one token, "Q"
PIECES = [b"0\xe6", "日".encode()[:2], "日".encode()[2:] + b"\xe6", b"a", "😀".encode()[:1]]


def _stream_pieces(ids: list[int]) -> tuple[list[tuple[int, str]], FinishEvent]:
    """(tokens accepted so far, delta) per token event, and the finish."""
    events: list[Event] = []

    def decode(token_ids: list[int]) -> str:
        pieces = (b"Q" if i == PROMPT_ID else PIECES[i] for i in token_ids)
        return b"".join(pieces).decode("utf-8", errors="replace")

    state = SequenceState(
        params=GenerationParams(prompt="Q", prompt_ids=(PROMPT_ID,), max_new_tokens=len(ids)),
        sink=events.append,
        handle=None,
        decode=decode,
        eos_ids=frozenset({99}),
        context_length=1000,
        submitted_at=0.0,
    )
    deltas: list[tuple[int, str]] = []
    for count, token in enumerate(ids, start=1):
        seen = len(events)
        state.accept(token)
        deltas += [(count, e.text) for e in events[seen:] if isinstance(e, TokenEvent) and e.text]
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    return deltas, finish


def test_tokens_that_each_end_in_an_unfinished_character_still_stream() -> None:
    # Every token is "0" and then a lead byte the next token never completes: the text
    # always ends in U+FFFD, yet each piece is decided once the next token arrives.
    deltas, finish = _stream_pieces([0] * 12)
    assert finish.text == "0\ufffd" * 12
    assert "".join(text for _, text in deltas) == finish.text
    first_seen = deltas[0][0]
    assert first_seen <= 2, f"nothing streamed until token {first_seen} of 12"
    streamed_before_end = "".join(text for count, text in deltas if count < 12)
    assert len(streamed_before_end) >= len("0\ufffd") * 10


def test_a_character_split_over_tokens_is_never_streamed_broken() -> None:
    # "0" + lead, then 日 in two pieces whose second ends in another lead: the lead
    # byte before 日 is decided invalid only once "a" follows.
    deltas, finish = _stream_pieces([3, 1, 2, 3, 4, 3, 3, 3])
    assert finish.text == "a日\ufffda\ufffdaaa"
    assert "".join(text for _, text in deltas) == finish.text
    assert all(not text.startswith(("\x80", "\x97")) for _, text in deltas)
    assert all(text.count("\ufffd") <= 1 for _, text in deltas)


def test_random_byte_pieces_stream_exactly_the_decoded_text() -> None:
    # Pieces cut from text with 2-, 3- and 4-byte characters, plus stray bytes: what
    # streams, joined, is always what decoding every token at once gives.
    source = "a日😀é b".encode() + b"\xe6\x97\xff"
    rng = random.Random(7)
    global PIECES
    saved = PIECES
    try:
        for _ in range(300):
            cuts = sorted(rng.sample(range(1, len(source)), rng.randint(3, 8)))
            PIECES = [source[a:b] for a, b in itertools.pairwise([0, *cuts, len(source)])]
            ids = [rng.randrange(len(PIECES)) for _ in range(rng.randint(1, 20))]
            deltas, finish = _stream_pieces(ids)
            whole = b"".join(PIECES[i] for i in ids).decode("utf-8", errors="replace")
            assert "".join(text for _, text in deltas) == finish.text == whole, (PIECES, ids)
    finally:
        PIECES = saved
