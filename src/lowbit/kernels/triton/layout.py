"""The Triton kernels' private weight layout (pure torch; made in ``prepare``, never saved).

4-bit codes (int4, nf4, fp4) are regrouped so that one 16-byte load per row gives a contiguous run of K:
for every chunk of ``CHUNK`` = 128 inputs, word j (int32, j < 16) holds the codes of inputs
``i * 16 + j`` in bits ``4i .. 4i+3`` (i < 8). Unpacking nibble i of a [rows, 16] word tile then gives the
weights of inputs ``i*16 .. i*16+15``: a contiguous slab that meets a contiguous slice of x. Codes are
unsigned (symmetric int4 codes c are stored as c + 8).

Rows go in blocks of ``ROWS`` = 16: a block's chunk c is 16 rows x 16 words stored together (1 KB), and the block
holds its chunks in order, so a kernel reading a chunk of 16k rows reads k contiguous kilobytes, not 16k separate
64-byte pieces. The words are one flat int32 tensor of ``ceil(N / 16) * 16 * K / 8`` entries (the last block
padded with zero rows); rows ``16a .. 16b`` are the flat range ``[16a * K/8, 16b * K/8)``.

Byte formats (int8, fp8) keep their canonical [N, K] layout: rows are already contiguous in K.
"""

from __future__ import annotations

import torch

CHUNK = 128  # inputs per chunk: 16 words x 8 nibbles
WORDS = 16  # int32 words per row per chunk
ROWS = 16  # rows per block


def nibble_words(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit codes [N, K] (K a multiple of 128) → flat int32 words in the blocked, chunked layout."""
    n, k = codes.shape
    c = codes.to(torch.int32).reshape(n, k // CHUNK, 8, WORDS)  # (row, chunk, nibble i, word j)
    words = torch.zeros(-(-n // ROWS) * ROWS, k // CHUNK, WORDS, dtype=torch.int32, device=codes.device)
    for i in range(8):
        words[:n] |= c[:, :, i, :] << (4 * i)  # bit 31 set by i = 7 is the sign bit: same bits
    blocks = words.reshape(-1, ROWS, k // CHUNK, WORDS).transpose(1, 2)  # (block, chunk, row in block, word)
    return blocks.contiguous().reshape(-1)


def codes_from_words(words: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of :func:`nibble_words`: flat words of an [n, k] weight → uint8 codes [n, k]."""
    blocks = words.reshape(-1, k // CHUNK, ROWS, WORDS).transpose(1, 2)  # (block, row in block, chunk, word)
    w = blocks.reshape(-1, k // CHUNK, 1, WORDS)[:n]
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=words.device).reshape(1, 1, 8, 1)
    return ((w >> shifts) & 15).to(torch.uint8).reshape(n, k)
