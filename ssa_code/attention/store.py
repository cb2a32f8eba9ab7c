"""The off-GPU store: full-resolution keys and values of every block that left the window.

One store per layer. Blocks are appended in order (block ``j`` covers positions
``sinks + j * B ... sinks + (j + 1) * B - 1``) and fetched by id when relevance scoring
selects them. Keys are stored un-rotated (see ``positions.py``).

- ``HostStore``: pages of (pageable) host RAM.
- ``DiskStore``: pages of a memory-mapped file per layer under ``store_dir``.
- ``NoStore``: keeps nothing; SSA then runs store-free (no retrieval).

Pages hold ``PAGE_BLOCKS`` blocks each, so the store grows without ever copying what it
already holds.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

PAGE_BLOCKS = 2048

_WRITER: ThreadPoolExecutor | None = None
_WRITER_LOCK = threading.Lock()


def _writer() -> ThreadPoolExecutor:
    """One thread, shared by every store, that moves blocks from bounce buffers into pages."""
    global _WRITER
    with _WRITER_LOCK:
        if _WRITER is None:
            _WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssa-store")
        return _WRITER


_COPY_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream that copies appended blocks to the host, one per device."""
    stream = _COPY_STREAMS.get(device)
    if stream is None:
        stream = _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return stream


def to_device_runs(runs: Iterator[tuple[int, torch.Tensor]],
                   device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    """``runs`` (``(first id, host tensor)``, e.g. :meth:`BlockStore.key_runs`) copied to ``device``.

    On CUDA each run goes through one of two page-locked buffers and is sent without waiting:
    the host copies the next run while the accelerator receives and uses this one (a copy
    straight from pageable memory waits on the driver's own staging). A yielded tensor stays
    valid while the caller holds it; the buffers come from PyTorch's caching host allocator,
    so a later call reuses them instead of locking new pages.
    """
    if device.type != "cuda":
        for first, t in runs:
            yield first, t.to(device)
        return
    bufs: list[torch.Tensor | None] = [None, None]
    sent: list[torch.cuda.Event | None] = [None, None]
    for i, (first, t) in enumerate(runs):
        j = i % 2
        if sent[j] is not None:
            sent[j].synchronize()  # the transfer out of buffer j (two runs ago) is over
        if bufs[j] is None or bufs[j].numel() < t.numel():
            bufs[j] = torch.empty(t.numel(), dtype=t.dtype, pin_memory=True)
        host = bufs[j][: t.numel()].view(t.shape)
        host.copy_(t)
        out = host.to(device, non_blocking=True)
        sent[j] = torch.cuda.Event()
        sent[j].record()
        yield first, out


def _rows(t: torch.Tensor) -> np.ndarray:
    """A numpy view of ``t`` (``[..., B, D]``, 2-byte or 4-byte elements) as rows of ``B * D``."""
    raw = t.view(torch.int16 if t.element_size() == 2 else torch.int32)
    return raw.numpy().reshape(-1, t.shape[-2] * t.shape[-1])


class BlockStore:
    """Interface of a per-layer block store: ``[H, B, D]`` keys and values per block."""

    def __init__(self, heads: int, block: int, dim: int, dtype: torch.dtype) -> None:
        self.heads, self.block, self.dim, self.dtype = heads, block, dim, dtype
        self.num_blocks = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append ``n`` blocks: ``k, v [H, n, B, D]`` (any device)."""
        raise NotImplementedError

    def read_into(self, heads: np.ndarray, ids: np.ndarray, k_out: torch.Tensor, v_out: torch.Tensor,
                  rows: np.ndarray) -> None:
        """Copy block ``ids[i]`` of head ``heads[i]`` into row ``rows[i]`` of ``k_out, v_out``
        (CPU tensors ``[R, B, D]``, page-locked when they feed a GPU; int64 arrays ``[n]``)."""
        raise NotImplementedError

    def key_runs(self, piece: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Every stored block's keys in order, as ``(first block id, keys [n, H, B, D])`` runs of at
        most ``piece`` blocks (CPU views of the store, no copy: keep or copy them before the next
        append)."""
        raise NotImplementedError

    def nbytes(self) -> int:
        return 0

    def truncate(self, n: int) -> None:
        """Forget every block from id ``n`` on (a rewind: blocks are only ever appended)."""
        if not 0 <= n <= self.num_blocks:
            raise ValueError(f"cannot truncate a store of {self.num_blocks} blocks to {n}")
        self.num_blocks = n

    def state(self) -> dict[str, torch.Tensor]:
        """All blocks as CPU tensors ``[H, N, B, D]`` (for saving the state)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class NoStore(BlockStore):
    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.num_blocks += k.shape[1]

    def read_into(self, heads, ids, k_out, v_out, rows) -> None:
        raise RuntimeError("store='none' keeps no blocks to fetch")

    def key_runs(self, piece: int) -> Iterator[tuple[int, torch.Tensor]]:
        raise RuntimeError("store='none' keeps no blocks to read")

    def state(self) -> dict[str, torch.Tensor]:
        return {}


class _PagedStore(BlockStore):
    """Pages of ``[PAGE_BLOCKS, H, B, D]`` for keys and for values."""

    def __init__(self, heads: int, block: int, dim: int, dtype: torch.dtype) -> None:
        super().__init__(heads, block, dim, dtype)
        self._bounce: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending: Future | None = None
        self.k_pages: list[torch.Tensor] = []
        self.v_pages: list[torch.Tensor] = []
        self._np_pages: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])

    def _new_page(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append ``n`` blocks ``k, v [H, n, B, D]``.

        From a CUDA device nothing here waits: the blocks are copied asynchronously into a
        page-locked bounce buffer, and a writer thread moves them into their pages once the
        copy is done, while the host goes on launching the next layers. The next append, fetch
        or state read of this store waits for that write (by then long finished).
        """
        self._flush()
        # [H, n, B, D] -> [n, H, B, D]: a block is one contiguous run in its page.
        k = k.transpose(0, 1)
        v = v.transpose(0, 1)
        if not k.is_cuda:
            self._write(self._reserve(k.shape[0]), k, v)
            return
        n = k.shape[0]
        if self._bounce is None or self._bounce[0].shape[0] < n:
            shape = (max(n, 2 * (0 if self._bounce is None else self._bounce[0].shape[0])),) + tuple(k.shape[1:])
            self._bounce = (torch.empty(shape, dtype=self.dtype, pin_memory=True),
                            torch.empty(shape, dtype=self.dtype, pin_memory=True))
        kb, vb = self._bounce[0][:n], self._bounce[1][:n]
        # On a side stream, so the compute stream goes on with the next layer meanwhile.
        stream = _copy_stream(k.device)
        stream.wait_stream(torch.cuda.current_stream(k.device))
        with torch.cuda.stream(stream):
            kb.copy_(k, non_blocking=True)
            vb.copy_(v, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        k.record_stream(stream)
        v.record_stream(stream)
        self._pending = _writer().submit(self._write_when_copied, event, self._reserve(n), kb, vb)

    def _reserve(self, n: int) -> list[tuple[int, int, int]]:
        """Room for ``n`` more blocks: ``(page, first slot, count)`` runs, pages allocated here."""
        runs, done = [], 0
        while done < n:
            page, slot = divmod(self.num_blocks, PAGE_BLOCKS)
            if page == len(self.k_pages):
                kp, vp = self._new_page()
                self.k_pages.append(kp)
                self.v_pages.append(vp)
            take = min(n - done, PAGE_BLOCKS - slot)
            runs.append((page, slot, take))
            done += take
            self.num_blocks += take
        return runs

    def _write(self, runs: list[tuple[int, int, int]], k: torch.Tensor, v: torch.Tensor) -> None:
        done = 0
        for page, slot, take in runs:
            self.k_pages[page][slot:slot + take].copy_(k[done:done + take])
            self.v_pages[page][slot:slot + take].copy_(v[done:done + take])
            done += take

    def _write_when_copied(self, event: torch.cuda.Event, runs, kb: torch.Tensor, vb: torch.Tensor) -> None:
        # Poll rather than event.synchronize(), which could hold the interpreter lock.
        while not event.query():
            time.sleep(50e-6)
        self._write(runs, kb, vb)

    def _flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def read_into(self, heads: np.ndarray, ids: np.ndarray, k_out: torch.Tensor, v_out: torch.Tensor,
                  rows: np.ndarray) -> None:
        self._flush()
        n = ids.size
        if n == 0:
            return
        if int(ids.max()) >= self.num_blocks or int(ids.min()) < 0:
            raise IndexError(f"block id out of range 0..{self.num_blocks - 1}")
        # Row (slot * H + head) of a page viewed as [PAGE_BLOCKS * H, B, D] is block `slot` of `head`.
        pages, src = ids // PAGE_BLOCKS, (ids % PAGE_BLOCKS) * self.heads + heads
        # One numpy gather per page (rows of block * dim elements): CPU index_select on bfloat16
        # was 60x slower, and stacking torch row views paid ~5 us per view.
        k_rows, v_rows = self._page_rows()
        ko, vo = _rows(k_out), _rows(v_out)
        for p in np.unique(pages).tolist():
            sel = pages == p
            ko[rows[sel]] = k_rows[p][src[sel]]
            vo[rows[sel]] = v_rows[p][src[sel]]

    def key_runs(self, piece: int) -> Iterator[tuple[int, torch.Tensor]]:
        # Runs never cross a page, so each is a slice of one page: a view, not a gather.
        if piece <= 0:
            raise ValueError(f"piece must be > 0 blocks, got {piece}")
        self._flush()
        first = 0
        while first < self.num_blocks:
            page, slot = divmod(first, PAGE_BLOCKS)
            n = min(piece, PAGE_BLOCKS - slot, self.num_blocks - first)
            yield first, self.k_pages[page][slot:slot + n]
            first += n

    def truncate(self, n: int) -> None:
        # A pending write lands in slots below num_blocks as reserved: let it finish first.
        self._flush()
        super().truncate(n)

    def _page_rows(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Numpy views ``[PAGE_BLOCKS * H, B * D]`` of the pages, made once per page."""
        while len(self._np_pages[0]) < len(self.k_pages):
            i = len(self._np_pages[0])
            self._np_pages[0].append(_rows(self.k_pages[i]))
            self._np_pages[1].append(_rows(self.v_pages[i]))
        return self._np_pages

    def nbytes(self) -> int:
        per_block = 2 * self.heads * self.block * self.dim * torch.empty((), dtype=self.dtype).element_size()
        return self.num_blocks * per_block

    def state(self) -> dict[str, torch.Tensor]:
        self._flush()
        if self.num_blocks == 0:
            empty = torch.empty(self.heads, 0, self.block, self.dim, dtype=self.dtype)
            return {"k": empty, "v": empty.clone()}
        k = torch.cat(self.k_pages)[: self.num_blocks].transpose(0, 1).contiguous()
        v = torch.cat(self.v_pages)[: self.num_blocks].transpose(0, 1).contiguous()
        return {"k": k, "v": v}

    def close(self) -> None:
        self._flush()
        self.k_pages.clear()
        self.v_pages.clear()
        self._np_pages = ([], [])


class HostStore(_PagedStore):
    """Pages of pageable host RAM: page-locking them cost about 1 s per GB (cudaHostAlloc,
    measured on an H200), far more than writing them from the page-locked bounce buffer."""

    def _new_page(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (PAGE_BLOCKS, self.heads, self.block, self.dim)
        return torch.empty(shape, dtype=self.dtype), torch.empty(shape, dtype=self.dtype)


class DiskStore(_PagedStore):
    """Pages are memory-mapped files ``<dir>/layer<L>.<k|v>.<page>.bin``, removed on close."""

    def __init__(self, heads: int, block: int, dim: int, dtype: torch.dtype, directory: str | os.PathLike,
                 layer: int) -> None:
        super().__init__(heads, block, dim, dtype)
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.layer = layer
        self._files: list[Path] = []

    def _new_page(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (PAGE_BLOCKS, self.heads, self.block, self.dim)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        pair = []
        for kind in ("k", "v"):
            path = self.dir / f"layer{self.layer}.{kind}.{len(self.k_pages)}.bin"
            mm = np.memmap(path, dtype=np.uint8 if itemsize == 1 else {2: np.int16, 4: np.int32, 8: np.int64}[itemsize],
                           mode="w+", shape=shape)
            self._files.append(path)
            pair.append(torch.from_numpy(mm).view(self.dtype))
        return pair[0], pair[1]

    def close(self) -> None:
        super().close()
        for path in self._files:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        self._files.clear()


def make_store(kind: str, heads: int, block: int, dim: int, dtype: torch.dtype, device: torch.device,
               directory: str | None, layer: int) -> BlockStore:
    if kind == "none":
        return NoStore(heads, block, dim, dtype)
    if kind == "host":
        return HostStore(heads, block, dim, dtype)
    if kind == "disk":
        assert directory is not None
        return DiskStore(heads, block, dim, dtype, directory, layer)
    raise ValueError(f"unknown store {kind!r}")
