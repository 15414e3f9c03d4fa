"""The camera timeline on its own: order, look-ahead, deadlines, duplicates, drops and retries, with an
injected clock and no processes."""

from __future__ import annotations

from anonengine.timeline import Timeline


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drain(timeline: Timeline) -> list[tuple[int, bool]]:
    """(seq, late) of every frame that may go out now, each marked done."""
    out = []
    while (turn := timeline.next()) is not None:
        out.append((turn.seq, turn.late))
        timeline.done(turn.seq)
    return out


def test_answers_out_of_order_go_out_in_order_once_their_look_ahead_is_known():
    timeline = Timeline(lookahead=2, clock=Clock())
    for seq in range(5):
        timeline.offer(seq, f"ref{seq}")
    for seq in (2, 0, 4):
        timeline.answer(seq, f"det{seq}")
    assert drain(timeline) == []  # 0 waits for 1 (its look-ahead)
    timeline.answer(1, "det1")
    assert drain(timeline) == [(0, False)]  # 1's look-ahead: 2 known, 3 not yet
    timeline.answer(3, "det3")
    assert drain(timeline) == [(1, False), (2, False)]  # 3 waits for 5, which may still come
    timeline.end_at(5)
    assert drain(timeline) == [(3, False), (4, False)]
    assert timeline.finished


def test_the_future_is_the_look_ahead_frames_known():
    timeline = Timeline(lookahead=3, clock=Clock())
    for seq, result in ((0, "a"), (1, "b"), (3, "d")):
        timeline.offer(seq, None)
        timeline.answer(seq, result)
    assert timeline.future(0) == ["b", "d"]


def test_a_late_frame_goes_out_late_and_holds_nobody_back():
    clock = Clock()
    timeline = Timeline(lookahead=2, deadline_s=5, clock=clock)
    for seq in range(4):
        timeline.offer(seq, f"ref{seq}")
    timeline.answer(0, "det0")
    timeline.answer(2, "det2")
    timeline.answer(3, "det3")
    assert drain(timeline) == []  # 1 is neither answered nor late: 0 waits
    clock.now = 5
    turn = timeline.next()
    assert (turn.seq, turn.late, turn.result) == (0, False, "det0")  # 1 is late: it holds 0 no longer
    timeline.done(0)
    turn = timeline.next()
    assert (turn.seq, turn.late, turn.item, turn.result) == (1, True, "ref1", None)
    timeline.done(1)
    assert timeline.answer(1, "det1 too late") is False  # a late answer after the frame went out: ignored
    timeline.end_at(4)
    assert drain(timeline) == [(2, False), (3, False)]


def test_a_frame_offered_again_keeps_its_first_deadline():
    clock = Clock()
    timeline = Timeline(lookahead=0, deadline_s=5, clock=clock)
    timeline.offer(0, "ref0")
    clock.now = 4
    timeline.offer(0, "ref0 again")
    clock.now = 5
    turn = timeline.next()
    assert turn.late and turn.item == "ref0"


def test_dropped_frames_are_skipped_and_a_retried_one_waits_for_its_offer():
    timeline = Timeline(lookahead=1, clock=Clock())
    for seq in range(3):
        timeline.offer(seq, seq)
    timeline.answer(0, "det0")
    assert timeline.drop(1)
    timeline.answer(2, "det2")
    assert timeline.next().seq == 0
    timeline.retry(0)  # its slot was reused: wait until it is offered and answered again
    assert timeline.next() is None
    timeline.offer(0, 0)
    timeline.answer(0, "det0")
    timeline.end_at(3)
    assert drain(timeline) == [(0, False), (2, False)]
    assert timeline.drop(0) is False  # already out


def test_a_duplicate_answer_is_refused_and_a_stop_ends_the_timeline():
    timeline = Timeline(lookahead=0, clock=Clock(), next_seq=10)
    assert timeline.answer(9, "old") is False  # before where this timeline starts (a restarted stage)
    timeline.offer(10, None)
    timeline.answer(10, "det10")
    timeline.offer(11, None)
    timeline.stop()
    assert timeline.next() is None and timeline.finished and timeline.end == 10


def test_a_stream_that_starts_again_after_a_gap_waits_only_for_the_frames_offered_before_it():
    """A live camera's capture died and its successor numbers from 100: frames 0-2 were offered by the dead
    one and still go out (answered, or late: obscured); 3-99 never come, and nothing waits for them."""
    clock = Clock()
    timeline = Timeline(lookahead=1, deadline_s=2, clock=clock)
    for seq in range(3):
        timeline.offer(seq, f"ref{seq}")
    timeline.answer(0, "det0")
    timeline.starts_again_at(100)
    timeline.offer(50, "late ref of the dead capture")
    assert not timeline.answer(60, "its answer")  # never comes: a duplicate to the caller (its slot freed)
    timeline.offer(100, "ref100")
    timeline.answer(100, "det100")
    timeline.answer(1, "det1")
    assert drain(timeline) == [(0, False)]  # 1 waits for 2, its look-ahead, still due
    clock.now = 2.5
    assert drain(timeline) == [(1, False), (2, True)]  # then 100 waits for 101, its look-ahead
    timeline.end_at(101)
    assert drain(timeline) == [(100, False)] and not timeline.results and not timeline.offered


def test_a_live_cameras_frames_wait_their_deadline_at_most_for_frames_that_never_came():
    """A live camera that dropped held its last frames back for its whole outage (18 s in a user's trial; for
    ever if it never came back): they waited for look-ahead frames that were not coming. After its deadline a
    live frame goes out with the look-ahead it has; a recording's waits (its frames do come)."""
    for live, expected in ((True, [(0, False), (1, False), (2, False)]), (False, [])):
        clock = Clock()
        timeline = Timeline(lookahead=8, deadline_s=2, clock=clock, live=live)
        for seq in range(3):
            timeline.offer(seq, f"ref{seq}")
            timeline.answer(seq, f"det{seq}")
        assert drain(timeline) == []  # frames 3 to 10 may still come
        clock.now = 1.9
        assert drain(timeline) == []
        clock.now = 2
        assert drain(timeline) == expected


def test_a_slow_live_camera_keeps_its_look_ahead():
    """One frame a second (slower than the look-ahead's 8 frames in the 2-s deadline): each frame still waits for
    the 8 after it, since frames keep coming; only a camera quiet for its deadline stops the wait."""
    clock = Clock()
    timeline = Timeline(lookahead=8, deadline_s=2, clock=clock, live=True)
    out = []
    for seq in range(12):
        clock.now = float(seq)
        timeline.offer(seq, f"ref{seq}")
        timeline.answer(seq, f"det{seq}")
        out += drain(timeline)
    assert out == [(seq, False) for seq in range(4)]  # frame 3 went out when frame 11 came
