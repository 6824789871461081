"""Sharded inference: `tb infer CONFIG --shard K/N` and `tb run PIPELINE --shard K/N`.

N processes (or the N tasks of a batch-farm array job) run the same command with K = 1..N and write
disjoint events into one stage_dir. The partition is by position: in each split's sorted event list
(after data_split), the event at position i (counted from 0) belongs to shard (i mod N) + 1. Strided
rather than in contiguous blocks because a shard then needs no split length to find its events, every
split is cut as evenly as it can be (shard sizes differ by at most one per split), and each shard gets
events from across the id range, not the first or last ones alone. K counts from 1, as in "shard 1 of
4" and in `#SBATCH --array=1-N`; an array numbered from 0 passes $((SLURM_ARRAY_TASK_ID + 1))/N.

Kept apart from stage.py so that `tb` checks the argument before importing torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from tb_plugin.config import ConfigError

T = TypeVar("T")
SHARD = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def share(self, items: Sequence[T]) -> list[T]:
        """This shard's items of one split's sorted list: positions index-1, index-1+count, ..."""
        return list(items[self.index - 1 :: self.count])

    def owns(self, position: int) -> bool:
        return position % self.count == self.index - 1


def parse_shard(text: str | None) -> Shard | None:
    """--shard K/N as given on the command line (None: not sharded); anything else is one line naming
    --shard and what it expects."""
    if text is None:
        return None
    match = SHARD.match(text)
    if match is None:
        raise ConfigError(
            f"--shard {text!r}: expected K/N, this process's shard K of N (e.g. --shard 1/4, or "
            f"--shard $SLURM_ARRAY_TASK_ID/4 in an array job numbered 1-4)"
        )
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ConfigError(f"--shard {text}: N, the number of shards, must be at least 1")
    if not 1 <= index <= count:
        hint = (
            "; K counts from 1: an array numbered from 0 (--array=0-...) passes $((SLURM_ARRAY_TASK_ID + 1))/N"
            if index == 0
            else ""
        )
        raise ConfigError(f"--shard {text}: K must be between 1 and N={count}{hint}")
    return Shard(index, count)
