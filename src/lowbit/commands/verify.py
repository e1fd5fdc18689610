"""``lowbit verify PATH``: check every shard against the sha256 in the index."""

from __future__ import annotations


def add_arguments(v) -> None:
    v.add_argument("path")


def run(args) -> int:
    import lowbit

    hashes = lowbit.verify(args.path)
    print(f"{args.path}: {len(hashes)} shard(s) match their sha256")
    return 0
