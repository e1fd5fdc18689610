"""The Triton kernels' private weight layout (pure torch; made in ``prepare``, never saved).

4-bit codes (int4, nf4, fp4) are regrouped so that one 16-byte load per row gives a contiguous run of K:
for every chunk of ``CHUNK`` = 128 inputs, word j (int32, j < 16) holds the codes of inputs
``i * 16 + j`` in bits ``4i .. 4i+3`` (i < 8). Unpacking nibble i of a [rows, 16] word tile then gives the
weights of inputs ``i*16 .. i*16+15``: a contiguous slab that meets a contiguous slice of x. Codes are
unsigned (symmetric int4 codes c are stored as c + 8).

Byte formats (int8, fp8) keep their canonical [N, K] layout: rows are already contiguous in K.
"""

from __future__ import annotations

import torch

CHUNK = 128  # inputs per chunk: 16 words x 8 nibbles
WORDS = 16  # int32 words per row per chunk


def nibble_words(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit codes [N, K] (K a multiple of 128) → int32 words [N, K / 8] in the chunked layout."""
    n, k = codes.shape
    c = codes.to(torch.int32).reshape(n, k // CHUNK, 8, WORDS)  # (row, chunk, nibble i, word j)
    words = torch.zeros(n, k // CHUNK, WORDS, dtype=torch.int32, device=codes.device)
    for i in range(8):
        words |= c[:, :, i, :] << (4 * i)  # bit 31 set by i = 7 is the sign bit: same bits
    return words.reshape(n, k // 8)


def codes_from_words(words: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`nibble_words`: int32 words [N, K / 8] → uint8 codes [N, K]."""
    n = words.shape[0]
    w = words.reshape(n, -1, 1, WORDS)
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=words.device).reshape(1, 1, 8, 1)
    return ((w >> shifts) & 15).to(torch.uint8).reshape(n, -1)
