"""`Batch.groups` and `Batch.concat`, the re-indexing that dynamic sampling does: each kept row must still point
at its own rollout, wherever its group lands in the pooled batch."""

from thinkgym.agents.types import Batch, Episode, Row


def batch(n_groups: int, size: int, tag: str) -> Batch:
    """`n_groups` groups of `size` episodes; episode i has i % 2 + 1 rows, each tagged with (tag, i, k)."""
    episodes = [Episode(i // size, i, [], info={"id": (tag, i)}) for i in range(n_groups * size)]
    rows = [Row([0, 1], 1, [1], [0.0], i) for i in range(len(episodes)) for _ in range(i % 2 + 1)]
    for k, r in enumerate(rows):
        r.input_ids = [hash((tag, r.episode, k)) % 1000, 1]
    return Batch(episodes, rows, {"time/rollout_s": 1.0})


def test_groups_keeps_the_chosen_groups_in_order_and_repoints_their_rows():
    b = batch(3, 2, "a")
    kept = b.groups([2, 0], 2)
    assert [ep.info["id"] for ep in kept.episodes] == [("a", 4), ("a", 5), ("a", 0), ("a", 1)]
    src = [r for g in (2, 0) for r in b.rows if g * 2 <= r.episode < (g + 1) * 2]
    assert [r.input_ids for r in kept.rows] == [r.input_ids for r in src]
    assert all(kept.episodes[new.episode] is b.episodes[old.episode] for new, old in zip(kept.rows, src))
    assert [r.episode for r in b.rows] == [0, 1, 1, 2, 3, 3, 4, 5, 5]  # the source batch is untouched
    assert b.groups([], 2).episodes == [] and b.groups([], 2).rows == []


def test_concat_offsets_each_parts_rows_by_the_episodes_before_it():
    first, second = batch(1, 2, "a").groups([0], 2), batch(2, 2, "b").groups([1], 2)
    whole = Batch.concat([first, Batch([], [], {}), second], {"time/rollout_s": 2.0})
    assert [ep.info["id"] for ep in whole.episodes] == [("a", 0), ("a", 1), ("b", 2), ("b", 3)]
    assert [whole.episodes[r.episode].info["id"] for r in whole.rows] == \
        [first.episodes[r.episode].info["id"] for r in first.rows] + [second.episodes[r.episode].info["id"] for r in second.rows]
    assert whole.stats == {"time/rollout_s": 2.0}
