"""Followers of one job share the log pages they read: one store read and one copy per page, a few kept per job."""

from __future__ import annotations

import asyncio
from pathlib import Path

from jupyter_launch.service import PAGE, LaunchService, LogPage, SharedPages
from jupyter_launch.spec import JobSpec
from jupyter_launch.store import BlobStore, SQLStore


class CountingStore(SQLStore):
    """The SQLite store, counting its log reads."""

    reads = 0

    def read_log(self, *args, **kwargs):
        self.reads += 1
        return super().read_log(*args, **kwargs)


def test_followers_of_one_job_share_its_pages_and_the_pages_go_with_them(tmp_path: Path) -> None:
    store = CountingStore(f"sqlite:///{tmp_path / 'launch.db'}")
    store.ensure_default_queue()
    job = store.enqueue("default", JobSpec(command=["true"]), artifact=None)
    claim = store.claim_next_job("agent", ["default"])
    assert claim is not None and claim.job.id == job.id
    log = b"".join(f"line {i}\n".encode() for i in range(1_200_000))  # 13 MB: more pages than are kept
    for start in range(0, len(log), 1 << 20):
        store.append_logs(job.id, claim.fence, [("stdout", log[start:start + (1 << 20)])])
    store.finish(job.id, claim.fence, "succeeded", exit_code=0)
    service = LaunchService(store, BlobStore(tmp_path / "blobs"), home=tmp_path)
    kept: list[int] = []

    async def follow() -> list[LogPage]:
        pages = []
        async for item in service.follow(job.id):
            if isinstance(item, LogPage):
                pages.append(item)
                kept.append(service.shared_pages().kept(job.id))
        return pages

    async def scenario() -> tuple[list[list[LogPage]], int]:
        followers = await asyncio.gather(*(follow() for _ in range(10)))
        return followers, service.shared_pages().kept(job.id)

    followers, left = asyncio.run(scenario())
    service.close()
    first = followers[0]
    assert b"".join(c.data for p in first for c in p.chunks) == log
    assert len(first) == -(-len(log) // PAGE)
    for other in followers[1:]:  # the same pages: the very same chunks, not copies
        assert [p.next_offset for p in other] == [p.next_offset for p in first]
        assert all(a is b for p, q in zip(first, other) for a, b in zip(p.chunks, q.chunks))
    # One read per page (and one at the end, finding nothing more), not one per follower.
    assert store.reads <= len(first) + 10
    assert len(first) > SharedPages().keep
    assert max(kept) == SharedPages().keep and left == 0
