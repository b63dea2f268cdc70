"""BLAKE3: the spec vectors, the official vectors, and pure-vs-package agreement."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from ductile_lib import hashing
from ductile_lib.hashing import (
    BACKEND,
    Blake3,
    PureBlake3,
    blake3_file_hex,
    blake3_hex,
    pure_blake3_hex,
)

try:
    import blake3 as blake3_package
except ImportError:  # the pure backend is then the only one
    blake3_package = None

TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"

EMPTY_DIGEST = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
STAR_SCOPE_DIGEST = "aa90c819d90e285ae82812d09c592a9d4b81c11e557ae3d9a24db2439749d984"

BOUNDARY_LENGTHS = [
    0, 1, 2, 63, 64, 65, 127, 128, 129, 1023, 1024, 1025, 2047, 2048, 2049,
    3072, 3073, 4095, 4096, 4097, 5120, 5121, 8191, 8192, 8193, 16384, 16385,
    31744, 32768, 32769, 65536, 65537, 102400,
]


def official_input(length: int) -> bytes:
    """The official BLAKE3 test input: bytes 0, 1, ..., 250 repeating."""
    return bytes(i % 251 for i in range(length))


def load_vectors() -> dict:
    path = TESTDATA / "blake3_vectors.json"
    if not path.exists():
        pytest.fail("shared test data missing: %s" % path)
    return json.loads(path.read_text())


def vector_cases():
    try:
        data = json.loads((TESTDATA / "blake3_vectors.json").read_text())
    except OSError:
        return [pytest.param(None, None, id="testdata-missing")]
    cases = [
        pytest.param(official_input(case["input_len"]), case["hash"], id="len-%d" % case["input_len"])
        for case in data["cases"]
    ]
    cases += [
        pytest.param(bytes.fromhex(case["input_hex"]), case["hash"], id="literal-%s" % (case["input_hex"] or "empty"))
        for case in data["literal"]
    ]
    return cases


def random_inputs(count: int = 220, seed: int = 20240315):
    """Seeded inputs, log-uniform in length up to 100 KB so the run stays fast."""
    rng = random.Random(seed)
    lengths = list(BOUNDARY_LENGTHS)
    while len(lengths) < count:
        lengths.append(int(math.exp(rng.uniform(0, math.log(100 * 1024)))))
    return [random_bytes(rng, n) for n in lengths]


def random_bytes(rng: random.Random, length: int) -> bytes:
    """`length` seeded random bytes (`Random.randbytes` needs Python 3.9+; this works anywhere)."""
    return rng.getrandbits(8 * length).to_bytes(length, "little") if length else b""


requires_package = pytest.mark.skipif(blake3_package is None, reason="blake3 package not installed")


# --- spec 10 §5.1 vectors -----------------------------------------------------

@pytest.mark.parametrize("hash_hex", [blake3_hex, pure_blake3_hex], ids=["default", "pure"])
def test_spec_vector_empty_input(hash_hex):
    assert hash_hex(b"") == EMPTY_DIGEST


@pytest.mark.parametrize("hash_hex", [blake3_hex, pure_blake3_hex], ids=["default", "pure"])
def test_spec_vector_star_scope_file(hash_hex):
    assert hash_hex(b'["*"]\n') == STAR_SCOPE_DIGEST


# --- the shared vector file ---------------------------------------------------

@pytest.mark.parametrize("data, expected", vector_cases())
def test_pure_matches_vector_file(data, expected):
    assert data is not None, "shared/testdata/blake3_vectors.json not found beside the project"
    assert pure_blake3_hex(data) == expected


@pytest.mark.parametrize("data, expected", vector_cases())
def test_default_backend_matches_vector_file(data, expected):
    assert data is not None, "shared/testdata/blake3_vectors.json not found beside the project"
    assert blake3_hex(data) == expected


def test_vector_file_covers_the_tree_shapes():
    lengths = {case["input_len"] for case in load_vectors()["cases"]}
    assert {0, 1, 1024, 1025, 2049, 3073, 102400} <= lengths


# --- pure against the package ---------------------------------------------------

@requires_package
def test_pure_matches_package_on_random_inputs():
    inputs = random_inputs()
    assert len(inputs) >= 200
    mismatches = [
        len(data) for data in inputs
        if pure_blake3_hex(data) != blake3_package.blake3(data).hexdigest()
    ]
    assert mismatches == []


@requires_package
@pytest.mark.parametrize("length", BOUNDARY_LENGTHS)
def test_pure_matches_package_at_boundary_lengths(length):
    data = random_bytes(random.Random(length), length)
    assert pure_blake3_hex(data) == blake3_package.blake3(data).hexdigest()


def test_backend_constant_names_the_backend_in_use():
    expected = "blake3" if blake3_package is not None else "pure-python"
    assert BACKEND == expected


# --- incremental use --------------------------------------------------------------

@pytest.mark.parametrize("hasher_class", [PureBlake3, Blake3], ids=["pure", "default"])
def test_incremental_odd_pieces_equal_one_shot(hasher_class):
    data = official_input(9000)
    rng = random.Random(7)
    hasher = hasher_class()
    position = 0
    while position < len(data):
        size = rng.choice([0, 1, 3, 7, 63, 65, 511, 1023, 1025, 2049])
        hasher.update(data[position:position + size])
        position += size
    assert hasher.hexdigest() == pure_blake3_hex(data)


def test_incremental_byte_by_byte_across_chunk_boundary():
    data = official_input(2100)
    hasher = PureBlake3()
    for index in range(len(data)):
        hasher.update(data[index:index + 1])
    assert hasher.hexdigest() == pure_blake3_hex(data)


def test_digest_does_not_finalize_the_hasher():
    hasher = PureBlake3(b"abc")
    first = hasher.hexdigest()
    assert hasher.hexdigest() == first
    hasher.update(b"def")
    assert hasher.hexdigest() == pure_blake3_hex(b"abcdef")


def test_update_accepts_bytearray_and_memoryview():
    data = official_input(3000)
    hasher = Blake3(bytearray(data[:1000]))
    hasher.update(memoryview(data)[1000:])
    assert hasher.hexdigest() == blake3_hex(data)


def test_digest_is_32_bytes_and_hex_is_64_lowercase():
    digest = Blake3(b"x").digest()
    text = blake3_hex(b"x")
    assert len(digest) == 32
    assert text == digest.hex() and len(text) == 64 and text == text.lower()


def test_str_input_is_rejected():
    with pytest.raises(TypeError):
        PureBlake3().update("not bytes")


# --- files ----------------------------------------------------------------------

@pytest.mark.parametrize("length", [0, 1, 1024, hashing.FILE_READ_SIZE, hashing.FILE_READ_SIZE + 1, 150000])
def test_file_hash_equals_bytes_hash(tmp_path, length):
    data = random_bytes(random.Random(length), length)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    assert blake3_file_hex(path) == blake3_hex(data)
    assert blake3_file_hex(str(path)) == pure_blake3_hex(data)


def test_file_hash_of_missing_file_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        blake3_file_hex(tmp_path / "absent")


def test_pure_hashes_100kb_quickly():
    import time

    data = official_input(100 * 1024)
    started = time.perf_counter()
    pure_blake3_hex(data)
    assert time.perf_counter() - started < 1.0


def test_fallback_backend_is_used_when_package_cannot_be_imported():
    """A fresh interpreter where `import blake3` fails must use the pure code."""
    import subprocess
    import sys

    project_root = Path(__file__).resolve().parents[1]
    script = (
        "import sys; sys.modules['blake3'] = None\n"
        "from ductile_lib import hashing\n"
        "print(hashing.BACKEND, hashing.blake3_hex(b''), hashing.Blake3(b'[\"*\"]\\n').hexdigest())\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=str(project_root),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["pure-python", EMPTY_DIGEST, STAR_SCOPE_DIGEST]
