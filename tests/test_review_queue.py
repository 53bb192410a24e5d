"""The review queue's bookkeeping (GUI-free): rows of the scene on screen, skips, decisions, and
chips coming back to the queue when their review is undone and leaving it again on redo."""

from __future__ import annotations

from rasterio.windows import Window

from loop.ranking_queue import QueueItem
from loop.review_queue import ReviewQueue


def _items() -> list[QueueItem]:
    return [QueueItem(rank=k + 1, scene_id="a" if k % 2 == 0 else "b", window=Window(k * 256, 0, 256, 256),
                      score=1.0 - k / 10) for k in range(5)]


def test_rows_are_the_queued_chips_of_the_scene_on_screen_in_order() -> None:
    queue, items = ReviewQueue(), _items()
    assert queue.fill(items, "a") == [items[0], items[2], items[4]]
    assert queue.items == items and queue.elsewhere() == 2
    assert queue.row_of(items[2]) == 1 and queue.row_of(items[1]) == 0  # not a row: the first
    same_chip = QueueItem(rank=9, scene_id="a", window=Window(512, 0, 256, 256), score=0.0)
    assert queue.row_showing(same_chip) == 1 and queue.row_showing(items[1]) is None


def test_skip_and_decisions_reorder_the_queue() -> None:
    queue, items = ReviewQueue(), _items()
    queue.fill(items, "a")
    queue.skip(items[0])
    assert queue.items == items[1:] + [items[0]]
    queue.reviewed(items[2])
    assert items[2] not in queue.items and queue.done == [items[2]]
    queue.reviewed(items[4], advance=False)  # reviewed, still in the queue until the panel moves on
    assert items[4] in queue.items and queue.done == [items[2], items[4]]


def test_an_undone_review_comes_back_first_and_leaves_again_on_redo() -> None:
    queue, items = ReviewQueue(), _items()
    queue.fill(items, "a")
    queue.reviewed(items[0])
    rest = queue.hold_for_editing(items[2])  # "edit, then accept": out of the queue, still on screen
    assert items[2] not in rest and queue.edited is items[2] and queue.edited_row == 1
    queue.reviewed(items[2], advance=False)
    queue.fill(rest, "a")
    reviewed = {(it.scene_id, it.window) for it in (items[0], items[2])}
    assert queue.after_history(reviewed) is None  # nothing undone or redone

    undo = queue.after_history({(items[0].scene_id, items[0].window)})  # items[2]'s review undone
    assert undo[0] is items[2] and queue.edited is None and queue.undone == [items[2]]
    queue.fill(undo, "a")
    redo = queue.after_history(reviewed)
    assert items[2] not in redo and queue.done == [items[0], items[2]] and queue.undone == []
