"""``lowbit fit``: per-layer mixed precision fitted to a size budget from measured sensitivity.

``candidates`` (what may be chosen and its bytes per layer) → ``sensitivity`` (what each choice costs each
layer) → ``solver`` (the least summed cost within the budget) → ``plan`` (the choice, its sizes) → ``run``
(``lowbit.fit``: measure, choose, quantize through the ``mixed`` method, save); ``plot`` draws a plan.
"""
