"""BLAKE3-256 digests for `.checksums` and plugin fingerprints (decision I4).

The `blake3` package is used when it is importable; otherwise a pure-Python
BLAKE3 gives byte-identical digests, so a copy of the tree runs with no
install step.  Only what Ductile needs is implemented: hash mode (no keyed
hashing, no key derivation) and the default 32-byte output.

The pure implementation is always importable as :class:`PureBlake3` /
:func:`pure_blake3_hex` so the tests can compare it with the package.

How BLAKE3 hashes (for the reader of the pure version): the input is cut into
1024-byte *chunks*; each chunk is compressed 64-byte *block* by block into an
8-word *chaining value*; chaining values are combined pairwise into a binary
tree of *parent* nodes; the final compression (a lone chunk or the top parent)
carries the ROOT flag and yields the digest.
"""
from __future__ import annotations

import operator
import os
import struct
from typing import List, Tuple, Union

try:  # the optional accelerated backend
    import blake3 as _blake3_package
except ImportError:  # pragma: no cover - depends on the environment
    _blake3_package = None

BACKEND = "blake3" if _blake3_package is not None else "pure-python"

DIGEST_SIZE = 32
FILE_READ_SIZE = 64 * 1024

BytesLike = Union[bytes, bytearray, memoryview]

# --- the pure-Python BLAKE3 ------------------------------------------------

_BLOCK_LEN = 64
_CHUNK_LEN = 1024
_BLOCKS_PER_CHUNK = _CHUNK_LEN // _BLOCK_LEN
_MASK = 0xFFFFFFFF

_CHUNK_START = 1 << 0
_CHUNK_END = 1 << 1
_PARENT = 1 << 2
_ROOT = 1 << 3

# The SHA-256 initial hash words: BLAKE3's IV and its key in hash mode.
_IV = (
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
)
_MSG_PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_permute = operator.itemgetter(*_MSG_PERMUTATION)
_unpack_block = struct.Struct("<16I").unpack_from
_pack_digest = struct.Struct("<8I").pack

Words = Tuple[int, ...]


def _compress(cv: Words, m: Words, counter: int, block_len: int, flags: int) -> Words:
    """The BLAKE3 compression function, truncated to the 8 words we use.

    Returns the first half of the output state (`s[i] ^ s[i+8]`), which is
    both the next chaining value and, under ROOT, the 32-byte digest.  The
    quarter-round G is written out inline for every call: hashing a 100 KB
    file costs ~90,000 G's, and a Python function call per G would double
    the run time.
    """
    s0, s1, s2, s3, s4, s5, s6, s7 = cv
    s8, s9, s10, s11 = _IV[0], _IV[1], _IV[2], _IV[3]
    s12 = counter & _MASK
    s13 = (counter >> 32) & _MASK
    s14 = block_len
    s15 = flags
    for round_number in range(7):
        if round_number:
            m = _permute(m)
        m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15 = m
        # Columns.  G(a, b, c, d, x, y):
        #   a += b + x; d = (d ^ a) >>> 16; c += d; b = (b ^ c) >>> 12
        #   a += b + y; d = (d ^ a) >>> 8;  c += d; b = (b ^ c) >>> 7
        s0 = (s0 + s4 + m0) & _MASK; s12 ^= s0; s12 = ((s12 >> 16) | (s12 << 16)) & _MASK
        s8 = (s8 + s12) & _MASK; s4 ^= s8; s4 = ((s4 >> 12) | (s4 << 20)) & _MASK
        s0 = (s0 + s4 + m1) & _MASK; s12 ^= s0; s12 = ((s12 >> 8) | (s12 << 24)) & _MASK
        s8 = (s8 + s12) & _MASK; s4 ^= s8; s4 = ((s4 >> 7) | (s4 << 25)) & _MASK

        s1 = (s1 + s5 + m2) & _MASK; s13 ^= s1; s13 = ((s13 >> 16) | (s13 << 16)) & _MASK
        s9 = (s9 + s13) & _MASK; s5 ^= s9; s5 = ((s5 >> 12) | (s5 << 20)) & _MASK
        s1 = (s1 + s5 + m3) & _MASK; s13 ^= s1; s13 = ((s13 >> 8) | (s13 << 24)) & _MASK
        s9 = (s9 + s13) & _MASK; s5 ^= s9; s5 = ((s5 >> 7) | (s5 << 25)) & _MASK

        s2 = (s2 + s6 + m4) & _MASK; s14 ^= s2; s14 = ((s14 >> 16) | (s14 << 16)) & _MASK
        s10 = (s10 + s14) & _MASK; s6 ^= s10; s6 = ((s6 >> 12) | (s6 << 20)) & _MASK
        s2 = (s2 + s6 + m5) & _MASK; s14 ^= s2; s14 = ((s14 >> 8) | (s14 << 24)) & _MASK
        s10 = (s10 + s14) & _MASK; s6 ^= s10; s6 = ((s6 >> 7) | (s6 << 25)) & _MASK

        s3 = (s3 + s7 + m6) & _MASK; s15 ^= s3; s15 = ((s15 >> 16) | (s15 << 16)) & _MASK
        s11 = (s11 + s15) & _MASK; s7 ^= s11; s7 = ((s7 >> 12) | (s7 << 20)) & _MASK
        s3 = (s3 + s7 + m7) & _MASK; s15 ^= s3; s15 = ((s15 >> 8) | (s15 << 24)) & _MASK
        s11 = (s11 + s15) & _MASK; s7 ^= s11; s7 = ((s7 >> 7) | (s7 << 25)) & _MASK

        # Diagonals.
        s0 = (s0 + s5 + m8) & _MASK; s15 ^= s0; s15 = ((s15 >> 16) | (s15 << 16)) & _MASK
        s10 = (s10 + s15) & _MASK; s5 ^= s10; s5 = ((s5 >> 12) | (s5 << 20)) & _MASK
        s0 = (s0 + s5 + m9) & _MASK; s15 ^= s0; s15 = ((s15 >> 8) | (s15 << 24)) & _MASK
        s10 = (s10 + s15) & _MASK; s5 ^= s10; s5 = ((s5 >> 7) | (s5 << 25)) & _MASK

        s1 = (s1 + s6 + m10) & _MASK; s12 ^= s1; s12 = ((s12 >> 16) | (s12 << 16)) & _MASK
        s11 = (s11 + s12) & _MASK; s6 ^= s11; s6 = ((s6 >> 12) | (s6 << 20)) & _MASK
        s1 = (s1 + s6 + m11) & _MASK; s12 ^= s1; s12 = ((s12 >> 8) | (s12 << 24)) & _MASK
        s11 = (s11 + s12) & _MASK; s6 ^= s11; s6 = ((s6 >> 7) | (s6 << 25)) & _MASK

        s2 = (s2 + s7 + m12) & _MASK; s13 ^= s2; s13 = ((s13 >> 16) | (s13 << 16)) & _MASK
        s8 = (s8 + s13) & _MASK; s7 ^= s8; s7 = ((s7 >> 12) | (s7 << 20)) & _MASK
        s2 = (s2 + s7 + m13) & _MASK; s13 ^= s2; s13 = ((s13 >> 8) | (s13 << 24)) & _MASK
        s8 = (s8 + s13) & _MASK; s7 ^= s8; s7 = ((s7 >> 7) | (s7 << 25)) & _MASK

        s3 = (s3 + s4 + m14) & _MASK; s14 ^= s3; s14 = ((s14 >> 16) | (s14 << 16)) & _MASK
        s9 = (s9 + s14) & _MASK; s4 ^= s9; s4 = ((s4 >> 12) | (s4 << 20)) & _MASK
        s3 = (s3 + s4 + m15) & _MASK; s14 ^= s3; s14 = ((s14 >> 8) | (s14 << 24)) & _MASK
        s9 = (s9 + s14) & _MASK; s4 ^= s9; s4 = ((s4 >> 7) | (s4 << 25)) & _MASK
    return (
        s0 ^ s8, s1 ^ s9, s2 ^ s10, s3 ^ s11,
        s4 ^ s12, s5 ^ s13, s6 ^ s14, s7 ^ s15,
    )


def _full_chunk_cv(data: BytesLike, offset: int, chunk_counter: int) -> Words:
    """Chaining value of the 1024-byte chunk at `offset`, known not to be the root."""
    cv = _IV
    last = _BLOCKS_PER_CHUNK - 1
    for index in range(_BLOCKS_PER_CHUNK):
        flags = (_CHUNK_START if index == 0 else 0) | (_CHUNK_END if index == last else 0)
        block = _unpack_block(data, offset + index * _BLOCK_LEN)
        cv = _compress(cv, block, chunk_counter, _BLOCK_LEN, flags)
    return cv


def _parent_words(left: Words, right: Words) -> Words:
    return left + right


class PureBlake3:
    """Incremental pure-Python BLAKE3-256: `update(bytes)` then `hexdigest()`.

    Bytes are buffered until more than one chunk is pending, because a chunk
    may only be compressed once we know it is not the last one (the last
    chunk, or the tree's top, gets the ROOT flag).  Finished chunks leave
    their chaining values on a stack that merges completed subtrees as it
    goes, so memory stays O(log n) whatever the input size.
    """

    name = "blake3"
    digest_size = DIGEST_SIZE

    def __init__(self, data: BytesLike = b"") -> None:
        self._pending = bytearray()
        self._chunks_done = 0
        self._cv_stack: List[Words] = []
        if data:
            self.update(data)

    def update(self, data: BytesLike) -> "PureBlake3":
        """Add bytes; any split of the input into updates gives the same digest."""
        self._pending += data
        offset = 0
        while len(self._pending) - offset > _CHUNK_LEN:
            cv = _full_chunk_cv(self._pending, offset, self._chunks_done)
            self._chunks_done += 1
            self._push_chunk_cv(cv)
            offset += _CHUNK_LEN
        if offset:
            del self._pending[:offset]
        return self

    def _push_chunk_cv(self, cv: Words) -> None:
        """Merge every subtree this chunk completes, then keep the result.

        After n chunks, the stack holds one entry per 1-bit of n: a trailing
        zero bit means two equal-sized subtrees are ready to join.
        """
        total = self._chunks_done
        while total & 1 == 0:
            cv = _compress(_IV, _parent_words(self._cv_stack.pop(), cv), 0, _BLOCK_LEN, _PARENT)
            total >>= 1
        self._cv_stack.append(cv)

    def digest(self) -> bytes:
        """The 32-byte digest; the hasher stays usable for more updates."""
        words, flags = self._final_node()
        root = _compress(words[0], words[1], words[2], words[3], flags | _ROOT)
        return _pack_digest(*root)

    def hexdigest(self) -> str:
        return self.digest().hex()

    def _final_node(self):
        """The last node's compression inputs, without the ROOT flag.

        The pending bytes form the last chunk (1..1024 bytes, or 0 for
        empty input).  Its blocks but the last are compressed now; the last
        block, and then each parent up the stack, is the node that the
        caller compresses under ROOT.
        """
        chunk = bytes(self._pending)
        block_count = max(1, -(-len(chunk) // _BLOCK_LEN))
        cv = _IV
        for index in range(block_count - 1):
            flags = _CHUNK_START if index == 0 else 0
            block = _unpack_block(chunk, index * _BLOCK_LEN)
            cv = _compress(cv, block, self._chunks_done, _BLOCK_LEN, flags)
        tail = chunk[(block_count - 1) * _BLOCK_LEN:]
        block = _unpack_block(tail.ljust(_BLOCK_LEN, b"\0"))
        flags = (_CHUNK_START if block_count == 1 else 0) | _CHUNK_END
        node = (cv, block, self._chunks_done, len(tail))
        for left in reversed(self._cv_stack):
            right = _compress(node[0], node[1], node[2], node[3], flags)
            node = (_IV, _parent_words(left, right), 0, _BLOCK_LEN)
            flags = _PARENT
        return node, flags


def pure_blake3_hex(data: BytesLike) -> str:
    """BLAKE3-256 of `data` with the pure-Python implementation, 64 hex chars."""
    return PureBlake3(data).hexdigest()


# --- the public interface ---------------------------------------------------

class Blake3:
    """Incremental BLAKE3-256 on the best available backend.

    Wraps `blake3.blake3` when the package is installed, else
    :class:`PureBlake3`; both give the same digests.
    """

    def __init__(self, data: BytesLike = b"") -> None:
        if _blake3_package is not None:
            self._hasher = _blake3_package.blake3()
        else:
            self._hasher = PureBlake3()
        if data:
            self.update(data)

    def update(self, data: BytesLike) -> "Blake3":
        self._hasher.update(data)
        return self

    def digest(self) -> bytes:
        return self._hasher.digest()

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


def blake3_hex(data: BytesLike) -> str:
    """BLAKE3-256 of `data` as 64 lowercase hex characters."""
    return Blake3(data).hexdigest()


def blake3_file_hex(path: Union[str, "os.PathLike[str]"]) -> str:
    """BLAKE3-256 of a file's raw bytes, read 64 KiB at a time.

    Reading in pieces keeps memory flat for large plugin entrypoints; the
    digest equals `blake3_hex` of the whole content.  OSError propagates so
    the caller can report the file as unreadable.
    """
    hasher = Blake3()
    with open(path, "rb") as handle:
        while True:
            piece = handle.read(FILE_READ_SIZE)
            if not piece:
                break
            hasher.update(piece)
    return hasher.hexdigest()
