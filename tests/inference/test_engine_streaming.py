"""Streaming text deltas: never a broken UTF-8 character, never text a stop string cuts.

Pure logic: tokens here are single bytes (the worst case of a byte-level BPE),
decoded the way a byte-level tokenizer does, so no model is needed.
"""

from __future__ import annotations

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
