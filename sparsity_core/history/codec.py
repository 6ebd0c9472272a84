"""Exact coding of one layer's entry in the mask history: a set of bit positions, or a byte string.

Every history entry of a layer is an XOR against the layer's previous state (a keyframe is an XOR
against all zeros), so the coder only ever stores *what changed*:

* **bit layers** (weight masks, head/neuron masks, the distance sample): the set of positions whose
  bit flipped, stored by whichever of these is smallest (all exact):

  ``EMPTY`` (0)            nothing flipped; zero bytes.
  ``BITMAP`` (1)           the XOR itself, ``numpy.packbits`` of the flat positions (MSB first),
                           ``ceil(numel / 8)`` bytes, pad bits zero.
  ``RICE`` (2)             the sorted flipped positions ``x_0 < x_1 < ...`` as gaps
                           ``g_0 = x_0, g_i = x_i - x_{i-1} - 1``, Golomb-Rice coded with parameter
                           ``k``: a *high* stream holding, per gap, ``g >> k`` zero bits then a one bit,
                           then a *low* stream holding ``g & (2**k - 1)`` as ``k``-bit big-endian
                           numbers; each stream packed MSB first and zero-padded to whole bytes. The
                           low stream is ``ceil(items * k / 8)`` bytes; the high stream is the rest.
  ``RICE_COMPLEMENT`` (3)  the same, of the positions that did *not* flip (more than half flipped).

  Rice coding of geometric gaps is within ~1 % of the entropy ``log2 C(N, f)`` of f random flips
  among N positions (measured, ``benchmarks/bench_history.py``), with none of an arithmetic coder's
  state: two vectorised numpy passes decode a million positions in tens of milliseconds.

* **byte layers** (token-selector weights, any dtype): the XOR of the raw little-endian bytes with
  the previous state's, as ``EMPTY`` (0, all zero: unchanged), ``RAW`` (4, the bytes verbatim) or
  ``ZLIB`` (5, zlib of the XOR *byte-shuffled*: byte 0 of every element, then byte 1, ...; the sign
  and exponent bytes of slowly drifting floats rarely change, so they compress).

Decoders validate everything they read (lengths, counts, the Rice parameter, position ranges; a
zlib stream must inflate to exactly the expected length) and raise ``ValueError`` with a short
reason; :mod:`sparsity_core.history.lazy` names the file and tensor around it.
"""

from __future__ import annotations

import zlib

import numpy as np

EMPTY, BITMAP, RICE, RICE_COMPLEMENT, RAW, ZLIB = 0, 1, 2, 3, 4, 5
BIT_METHODS = (EMPTY, BITMAP, RICE, RICE_COMPLEMENT)
BYTE_METHODS = (EMPTY, RAW, ZLIB)
_ZLIB_LEVEL = 6


# ----------------------------------------------------------------------------------------------
# bit layers
def rice_bits(gaps: np.ndarray, k: int) -> int:
    """Size in bits of the Rice code of ``gaps`` with parameter ``k`` (high + low stream)."""
    return int(len(gaps) * (k + 1) + int((gaps >> k).sum(dtype=np.int64)))


def _gaps(positions: np.ndarray) -> np.ndarray:
    return np.diff(positions, prepend=np.int64(-1)) - 1


def _best_k(gaps: np.ndarray) -> int:
    """The Rice parameter with the fewest bits: scanned around log2 of the mean gap, where the
    optimum of a geometric distribution lies."""
    mean = float(gaps.mean()) if len(gaps) else 0.0
    centre = int(np.log2(mean * 0.69)) if mean >= 2 else 0
    candidates = range(max(0, centre - 2), centre + 3)
    return min(candidates, key=lambda k: rice_bits(gaps, k))


def _bits_to_uint(values: np.ndarray, k: int) -> np.ndarray:
    """(n,) unsigned ints -> (n * k,) bits, big-endian per value (the low stream, unpacked)."""
    width = 8 if k <= 8 else 16 if k <= 16 else 32 if k <= 32 else 64
    big = values.astype(f">u{width // 8}")
    bits = np.unpackbits(big.view(np.uint8).reshape(len(values), width // 8), axis=1)
    return bits[:, width - k:].reshape(-1)


def _read_fields(low: np.ndarray, n: int, k: int) -> np.ndarray:
    """Inverse of :func:`_bits_to_uint` straight from the packed bytes: every k-bit field is read
    through a window of the bytes it spans (no array of single bits)."""
    width = (k + 14) // 8  # bytes a k-bit field can span at any bit offset
    offsets = np.arange(n, dtype=np.int64) * k
    first = offsets >> 3
    padded = np.concatenate([low, np.zeros(width, dtype=np.uint8)])
    window = np.zeros(n, dtype=np.uint64)
    for j in range(width):
        window = (window << np.uint64(8)) | padded[first + j]
    shift = (8 * width - k - (offsets & 7)).astype(np.uint64)
    return ((window >> shift) & np.uint64((1 << k) - 1)).astype(np.int64)


def rice_encode(positions: np.ndarray, k: int) -> bytes:
    """High stream then low stream (see the module docstring) of sorted, distinct positions."""
    gaps = _gaps(positions)
    quotients = gaps >> k
    high = np.zeros(len(gaps) + int(quotients.sum(dtype=np.int64)), dtype=bool)
    high[np.cumsum(quotients + 1) - 1] = True
    parts = [np.packbits(high).tobytes()]
    if k and len(gaps):
        parts.append(np.packbits(_bits_to_uint(gaps & ((1 << k) - 1), k)).tobytes())
    return b"".join(parts)


def rice_decode(data: np.ndarray, items: int, k: int, numel: int) -> np.ndarray:
    """Sorted positions (int64) from a Rice segment, every length and range checked."""
    low_len = -(-items * k // 8)
    high_len = len(data) - low_len
    if high_len < -(-items // 8):
        raise ValueError(f"Rice segment of {len(data)} bytes is too short for {items} positions with k={k}")
    high, low = data[:high_len], data[high_len:]
    if items == 0:
        if len(data):
            raise ValueError("Rice segment with no positions must be empty")
        return np.zeros(0, dtype=np.int64)
    ones = np.flatnonzero(np.unpackbits(high))
    if len(ones) != items:
        raise ValueError(f"Rice high stream holds {len(ones)} codes, the index says {items}")
    if ones[-1] < 8 * (high_len - 1):
        raise ValueError("Rice high stream has trailing bytes after its last code")
    gaps = np.diff(ones, prepend=np.int64(-1)) - 1
    if int(gaps.max()) > (numel >> k):  # a quotient no valid gap can have; checked before shifting
        raise ValueError(f"a Rice quotient exceeds what {numel} entries allow")
    if k:
        pad = 8 * low_len - items * k
        if pad and int(low[-1]) & ((1 << pad) - 1):
            raise ValueError("Rice low stream has nonzero pad bits")
        gaps = (gaps << k) + _read_fields(low, items, k)
    if int(gaps.max()) >= numel:
        raise ValueError(f"a gap reaches past the layer's {numel} entries")
    positions = np.cumsum(gaps + 1) - 1
    if positions[-1] >= numel:
        raise ValueError(f"position {int(positions[-1])} is outside the layer's {numel} entries")
    return positions


def encode_bits(flat: np.ndarray) -> tuple[int, int, int, bytes]:
    """The cheapest exact encoding of the set ``flat`` (bool, 1-D): (method, count, k, payload);
    ``count`` is the number of set positions, whatever the method."""
    numel = len(flat)
    positions = np.flatnonzero(flat)
    count = len(positions)
    if count == 0:
        return EMPTY, 0, 0, b""
    best = (BITMAP, 0, 8 * -(-numel // 8))
    method = RICE
    if 2 * count > numel:
        positions, method = np.flatnonzero(~flat), RICE_COMPLEMENT
    gaps = _gaps(positions)
    k = _best_k(gaps) if len(gaps) else 0
    rice = 8 * (-(-(len(gaps) + int((gaps >> k).sum(dtype=np.int64))) // 8) + -(-len(gaps) * k // 8))
    if rice < best[2]:
        best = (method, k, rice)
    if best[0] == BITMAP:
        return BITMAP, count, 0, np.packbits(flat).tobytes()
    return best[0], count, best[1], rice_encode(positions, best[1])


def check_bits_header(method: int, count: int, k: int, nbytes: int, numel: int) -> None:
    """Validate one bit-layer segment's index entry before any byte of it is decoded."""
    if method not in BIT_METHODS:
        raise ValueError(f"unknown method {method} for a bit layer")
    if not 0 <= count <= numel:
        raise ValueError(f"count {count} outside [0, {numel}]")
    if not 0 <= k <= max(1, int(numel).bit_length()):
        raise ValueError(f"Rice parameter k={k} out of range for {numel} entries")
    items = numel - count if method == RICE_COMPLEMENT else count
    if method == EMPTY and (count or nbytes or k):
        raise ValueError("an empty segment must have count 0, k 0 and no bytes")
    if method == BITMAP and (nbytes != -(-numel // 8) or k):
        raise ValueError(f"a bitmap of {numel} entries takes {-(-numel // 8)} bytes, the index says {nbytes}")
    if method in (RICE, RICE_COMPLEMENT):
        low = -(-items * k // 8)
        if not -(-items // 8) + low <= nbytes <= low + -(-(items + numel) // 8):
            raise ValueError(f"{nbytes} bytes cannot hold {items} Rice-coded positions of {numel} with k={k}")


def apply_bits(state: np.ndarray, method: int, count: int, k: int, data: np.ndarray) -> None:
    """XOR a decoded segment into ``state`` (flat bool) in place; checks the set's size."""
    numel = len(state)
    if method == EMPTY:
        return
    if method == BITMAP:
        bits = np.unpackbits(data)
        if bits[numel:].any():
            raise ValueError("bitmap has nonzero pad bits")
        bits = bits[:numel].view(bool)
        if int(np.count_nonzero(bits)) != count:
            raise ValueError(f"bitmap holds {int(np.count_nonzero(bits))} set bits, the index says {count}")
        state ^= bits
        return
    items = numel - count if method == RICE_COMPLEMENT else count
    positions = rice_decode(data, items, k, numel)
    if method == RICE_COMPLEMENT:
        np.logical_not(state, out=state)
    state[positions] = ~state[positions]


# ----------------------------------------------------------------------------------------------
# byte layers
def _shuffle(raw: np.ndarray, itemsize: int) -> np.ndarray:
    return raw.reshape(-1, itemsize).T.reshape(-1) if itemsize > 1 else raw


def _unshuffle(raw: np.ndarray, itemsize: int) -> np.ndarray:
    return raw.reshape(itemsize, -1).T.reshape(-1) if itemsize > 1 else raw


def encode_bytes(xor: np.ndarray, itemsize: int) -> tuple[int, bytes]:
    """(method, payload) for the XOR (uint8, 1-D) of a byte layer with its previous state."""
    if not xor.any():
        return EMPTY, b""
    packed = zlib.compress(_shuffle(xor, itemsize).tobytes(), _ZLIB_LEVEL)
    if len(packed) < len(xor):
        return ZLIB, packed
    return RAW, xor.tobytes()


def check_bytes_header(method: int, nbytes: int, size: int) -> None:
    if method not in BYTE_METHODS:
        raise ValueError(f"unknown method {method} for a byte layer")
    if method == EMPTY and nbytes:
        raise ValueError("an unchanged byte layer must have no bytes")
    if method == RAW and nbytes != size:
        raise ValueError(f"a raw layer of {size} bytes is stored in {nbytes}")
    if method == ZLIB and not 0 < nbytes <= size + 64:
        raise ValueError(f"{nbytes} zlib bytes for a layer of {size} bytes")


def apply_bytes(state: np.ndarray, method: int, data: np.ndarray, itemsize: int) -> None:
    """XOR a decoded byte segment into ``state`` (uint8, 1-D) in place."""
    if method == EMPTY:
        return
    if method == RAW:
        state ^= data
        return
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data.tobytes(), len(state))
    except zlib.error as err:
        raise ValueError(f"zlib stream is damaged ({err})") from None
    if len(raw) != len(state) or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise ValueError(f"zlib stream does not inflate to exactly {len(state)} bytes")
    state ^= _unshuffle(np.frombuffer(raw, dtype=np.uint8), itemsize)
