"""KV-cache eviction at the end of prefill (StreamingLLM, H2O, SnapKV, PyramidKV,
VL-Cache, LOOK-M, random, and kvpress's Knorm, KeyDiff, TOVA and observed attention).
Knob ``ratio`` = share of each sample's real prompt kept per layer (on average over
layers for the methods with per-layer budgets); kvpress's ``compression_ratio`` is
``1 - ratio``.

``scores`` holds the pure budget and selection math, ``base`` the per-row selection on
the shared token layout (``methods/layout``), one file per registered method."""
