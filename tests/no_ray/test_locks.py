import asyncio

from serve_cleanup.core.locks import KeyedLocks


async def test_same_key_serializes_other_keys_do_not():
    locks = KeyedLocks()
    order: list[str] = []

    async def work(key: str, tag: str, delay: float) -> None:
        async with locks.hold(key):
            order.append(f"{tag}+")
            await asyncio.sleep(delay)
            order.append(f"{tag}-")

    await asyncio.gather(work("a", "a1", 0.02), work("a", "a2", 0.0), work("b", "b1", 0.0))
    # a2 cannot start before a1 ends; b1 runs while a1 holds "a".
    assert order.index("a1-") < order.index("a2+")
    assert order.index("b1+") < order.index("a1-")
    assert not locks.busy("a") and not locks.busy("b")


async def test_busy_while_held_and_released_on_error():
    locks = KeyedLocks()
    try:
        async with locks.hold("k"):
            assert locks.busy("k")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert not locks.busy("k")
