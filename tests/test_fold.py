"""The carried fold (`context.Fold`) against a fold of the whole log, on a scripted log.

The harness tests check the same on every real run (CORRAL_VERIFY_FOLD, set in tests/conftest.py); this
one spells out the cases where carrying is subtle: input queued mid-turn and taken in later, a tool
call's `run:` record arriving after its span ended, and a fold carried past a clone."""

from __future__ import annotations

from typing import Any

from corral.harness.context import Fold, fold, input_key, run_key


def _msg(eid: str, text: str, processed: bool = True) -> dict[str, Any]:
    return {
        "type": "user.message",
        "id": eid,
        "content": [{"type": "text", "text": text}],
        "processed_at": "2026-11-29T00:00:00Z" if processed else None,
    }


def _span(start: str, end: str) -> list[dict[str, Any]]:
    return [
        {"type": "span.model_request_start", "id": start},
        {"type": "span.model_request_end", "id": end, "model_request_start_id": start, "is_error": False},
    ]


LOG: list[dict[str, Any]] = [
    _msg("m1", "first"),
    {"type": "session.status_running", "id": "r1"},
    *_span("s1", "e1"),  # answers with a tool call
    _msg("m2", "sent while the tool ran"),  # queued at seq 5, taken in after seq 7
    {"type": "agent.tool_use", "id": "t1"},
    {"type": "agent.tool_result", "id": "x1", "tool_use_id": "t1", "content": [{"type": "text", "text": "ok"}]},
    *_span("s2", "e2"),
]
RECORDS: dict[str, dict[str, Any]] = {
    input_key("m1"): {"kind": "input", "after_seq": 0},
    "s1": {
        "kind": "model_output",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}}],
        "stop_reason": "tool_use",
        "tools": [
            {
                "event_id": "t1",
                "toolu_id": "toolu_1",
                "name": "bash",
                "input": {},
                "kind": "agent",
                "permission": "allow",
            }
        ],
    },
    run_key("t1"): {"kind": "tool_run", "owner": "w"},
    input_key("m2"): {"kind": "input", "after_seq": 7},
    "s2": {
        "kind": "model_output",
        "content": [{"type": "text", "text": "done"}],
        "stop_reason": "end_turn",
        "tools": [],
    },
}
RECORD_AT = {input_key("m1"): 1, "s1": 4, run_key("t1"): 6, input_key("m2"): 7, "s2": 9}
"""When each record was written: with the event of that seq."""


def test_carried_fold_equals_whole_fold_at_every_point() -> None:
    """As `RunLog` carries it: fold each append onto the state, except when queued input is taken in
    (its processed mark changes an earlier event), where the whole log is folded again."""
    log = [dict(e) for e in LOG]
    log[4]["processed_at"] = None  # m2 waits in the queue until it is taken in after seq 7
    events = list(enumerate(log, 1))
    state, taken = Fold({}), False
    for seq, event in events:
        for key, at in RECORD_AT.items():
            if at == seq and key != input_key("m2"):  # written with the take-in, below
                state.record(key, RECORDS[key])
        state.add(seq, event)
        known = {k: v for k, v in RECORDS.items() if RECORD_AT[k] <= seq and (taken or k != input_key("m2"))}
        assert state.result() == fold(events[:seq], known), f"after seq {seq}"
        if seq == 7:
            assert [s for s, _ in state.result().pending] == [5]
            events[4], taken = (5, LOG[4]), True  # taken in: processed, with its in: record
            known[input_key("m2")] = RECORDS[input_key("m2")]
            state = Fold(dict(known))
            for s, e in events[:seq]:
                state.add(s, e)
            assert not state.result().pending
    final = state.result()
    assert final == fold(events, RECORDS)
    assert final.messages[-1] == {"role": "assistant", "content": [{"type": "text", "text": "done"}]}
    # m2 joined the context after the tool result, where it was taken in, not where it was queued
    user = final.messages[-2]["content"]
    assert [b["type"] for b in user] == ["tool_result", "text"] and user[1]["text"] == "sent while the tool ran"


def test_run_record_after_the_span_marks_the_tool_started() -> None:
    events = list(enumerate(LOG[:4], 1))
    state = Fold({"s1": RECORDS["s1"]})
    for seq, event in events:
        state.add(seq, event)
    assert not state.result().tool_uses["t1"].started
    state.record(run_key("t1"), RECORDS[run_key("t1")])
    assert state.result().tool_uses["t1"].started
    assert state.result() == fold(events, {"s1": RECORDS["s1"], run_key("t1"): RECORDS[run_key("t1")]})


def test_a_clone_folds_on_without_changing_the_original() -> None:
    events = list(enumerate(LOG, 1))
    records = {k: v for k, v in RECORDS.items() if RECORD_AT[k] <= 6}
    state = Fold(dict(records))
    for seq, event in events[:6]:
        state.add(seq, event)
    before = fold(events[:6], records)
    ahead = state.clone()
    ahead.record(input_key("m2"), RECORDS[input_key("m2")])
    ahead.record("s2", RECORDS["s2"])
    for seq, event in events[6:]:
        ahead.add(seq, event)
    assert ahead.result() == fold(events, RECORDS)
    assert state.result() == before  # the tool's result did not leak into the original


def test_input_taken_in_after_an_event_not_yet_folded_is_placed_at_the_end() -> None:
    """A fold that stops before the event an input was taken in after places it at the end, as the whole
    fold does, and says it can no longer be carried."""
    events = list(enumerate(LOG[:6], 1))
    records = {k: v for k, v in RECORDS.items() if RECORD_AT[k] <= 6} | {input_key("m2"): RECORDS[input_key("m2")]}
    state = Fold(dict(records))
    for seq, event in events:
        state.add(seq, event)
    assert not state.carried
    assert state.result() == fold(events, records)
    assert state.result().user_blocks[-1] == {"type": "text", "text": "sent while the tool ran"}


def _queued(seq: int, eid: str, text: str) -> tuple[int, dict[str, Any]]:
    return seq, _msg(eid, text, processed=False)


def test_input_taken_in_is_folded_where_a_whole_fold_places_it() -> None:
    """Two messages queued, the later one the log's last event: taken in together, the last event comes
    first (it counts from its own place), then the earlier one (from where it was taken in)."""
    log = [
        (1, _msg("m1", "first")),
        (2, {"type": "session.status_running", "id": "r1"}),
        *enumerate(_span("s1", "e1"), 3),
        _queued(5, "m2", "second"),
        (6, {"type": "session.status_idle", "id": "i1", "stop_reason": {"type": "end_turn"}}),
        _queued(7, "m3", "third"),
    ]
    records = {input_key("m1"): {"kind": "input", "after_seq": 0}, **{"s1": RECORDS["s2"]}}
    state = Fold(dict(records))
    for seq, event in log:
        state.add(seq, event)
    assert [s for s, _ in state.result().pending] == [5, 7]
    taken = {input_key("m2"): {"kind": "input", "after_seq": 7}, input_key("m3"): {"kind": "input", "after_seq": 7}}
    for key, body in taken.items():
        state.record(key, body)
    marked = [(seq, {**event, "processed_at": "2026-11-29T00:00:01Z"}) for seq, event in log if seq in (5, 7)]
    assert state.take_in(marked)
    whole = fold([(s, dict(marked)[s] if s in (5, 7) else e) for s, e in log], records | taken)
    assert state.result() == whole
    assert [b["text"] for b in whole.user_blocks] == ["third", "second"]


def test_taking_in_anywhere_but_after_the_last_event_is_refused() -> None:
    log = [(1, _msg("m1", "first")), _queued(2, "m2", "second"), (3, {"type": "session.status_running", "id": "r"})]
    state = Fold(
        {input_key("m1"): {"kind": "input", "after_seq": 0}, input_key("m2"): {"kind": "input", "after_seq": 2}}
    )
    for seq, event in log:
        state.add(seq, event)
    before = state.clone().result()
    assert not state.take_in([(2, {**log[1][1], "processed_at": "2026-11-29T00:00:01Z"})])
    assert state.result() == before


def test_input_taken_in_after_queued_input_counts_from_there() -> None:
    """m2 is taken in after seq 3, which is m3, itself still queued: m2 counts from seq 3 all the same,
    not from the end of the log."""
    log = [
        (1, _msg("m1", "first")),
        (2, _msg("m2", "second")),
        (3, _msg("m3", "third", processed=False)),
        (4, {"type": "session.status_running", "id": "r"}),
        *enumerate(_span("s1", "e1"), 5),
    ]
    records = {
        input_key("m1"): {"kind": "input", "after_seq": 0},
        input_key("m2"): {"kind": "input", "after_seq": 3},
        "s1": RECORDS["s2"],
    }
    convo = fold(log, records)
    assert convo.messages[0]["content"] == [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    assert [s for s, _ in convo.pending] == [3]
