"""Resumable sampling: a loader whose order depends only on (seed, epoch), so that a run resumed in the
middle of an epoch sees exactly the batches an uninterrupted run would; and a loader that hands a
:class:`SviteError` raised in a worker process (an unreadable image, say) back whole.

torch re-raises a worker's exception from its text (``Caught SviteError in DataLoader worker process 0``
and the worker's traceback as the message), so the user's sentence, its file and detail would have to be
parsed back out of a traceback. Instead the dataset's ``SviteError`` travels as a value: the worker returns
it in place of the batch (:class:`_Failed`, pickled with its values) and the loader raises it in the main
process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.utils.data
from torch.utils.data import default_collate

from ..errors import SviteError
from .bundle import check_int


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Wraps torch.utils.data.DistributedSampler (works with num_replicas=1, rank=0 without an
    initialised process group) so that a run resumed in the middle of an epoch sees exactly the
    batches an uninterrupted run would: set_epoch(e) reseeds the permutation, skip(n_samples) drops the
    first n samples of this rank's order for the current epoch only (reset by the next set_epoch)."""

    def __init__(
        self,
        dataset_len: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        dataset_len = check_int("dataset_len", dataset_len, 0)
        world_size = check_int("world_size", world_size, 1)
        rank = check_int("rank", rank, 0)
        if rank >= world_size:
            raise SviteError(f"rank={rank}: must be < world_size={world_size}")
        seed = check_int("seed", seed, 0)
        self._inner = torch.utils.data.DistributedSampler(
            range(dataset_len),  # type: ignore[arg-type]  (only len() is used)
            num_replicas=world_size,
            rank=rank,
            shuffle=bool(shuffle),
            seed=seed,
            drop_last=bool(drop_last),
        )
        self._skip = 0

    @property
    def epoch(self) -> int:
        return int(self._inner.epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees in a full epoch (before any skip)."""
        return int(self._inner.num_samples)

    @property
    def skipped(self) -> int:
        return self._skip

    def set_epoch(self, epoch: int) -> None:
        """Reseed the order for ``epoch`` and forget any skip from the previous epoch."""
        self._inner.set_epoch(check_int("epoch", epoch, 0))
        self._skip = 0

    def skip(self, n_samples: int) -> None:
        """Resume mid-epoch: the next iteration starts after the first n_samples of this epoch's order."""
        n_samples = check_int("n_samples", n_samples, 0)
        if n_samples > self.num_samples:
            raise SviteError(
                f"cannot skip {n_samples} samples: this rank only has {self.num_samples} per epoch"
            )
        self._skip = n_samples

    def __iter__(self):  # type: ignore[override]
        order = list(iter(self._inner))
        return iter(order[self._skip :])

    def __len__(self) -> int:
        return self.num_samples - self._skip


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose order depends only on (seed, epoch), so runs can be resumed batch-exactly.

    The sampler is reachable as ``loader.sampler``: call ``set_epoch`` every epoch and ``skip`` when
    resuming. ``drop_last`` applies both to the rank split and to the final short batch.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    num_workers = check_int("num_workers", num_workers, 0)
    sampler = ResumableSampler(len(dataset), shuffle, seed, rank, world_size, drop_last)  # type: ignore[arg-type]
    return ReportingLoader(
        _Reporting(dataset),
        batch_size=batch_size,
        collate_fn=_collate,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        # Its own generator: otherwise every new iterator draws its base seed from the global RNG,
        # and a run resumed mid-epoch would see different dropout/Gumbel noise than an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )


class _Failed:
    """A ``SviteError`` raised while loading a sample, carried to the main process as a value."""

    def __init__(self, error: SviteError) -> None:
        self.error = error


class _Reporting(torch.utils.data.Dataset):
    """The dataset, with a ``SviteError`` of ``__getitem__`` returned as :class:`_Failed` instead of raised."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except SviteError as err:
            return _Failed(err)


def _collate(batch: Sequence[Any]) -> Any:
    failed = next((item for item in batch if isinstance(item, _Failed)), None)
    return failed if failed is not None else default_collate(batch)


class ReportingLoader(torch.utils.data.DataLoader):
    """A DataLoader that raises a sample's ``SviteError`` in the main process, with its values."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for batch in super().__iter__():
            if isinstance(batch, _Failed):
                raise batch.error
            yield batch
