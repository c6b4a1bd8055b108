"""The token layout shared by KV-cache eviction and visual-token pruning.

Both families change which tokens the decoder processes or its cache holds, so they
share one set of hooks (:mod:`.manager`), one batch bookkeeping (:mod:`.state`), the
masks (:mod:`.masks`), queries computed as the model computes them (:mod:`.queries`),
the write of kept entries into the cache (:mod:`.cache_write`), the attention-score math
both use (:mod:`.attention`), per-sample accounting (:mod:`.accounting`, :mod:`.flops`)
and the method base (:mod:`.method`).  ``eviction`` and ``visual_tokens`` import this
package and never each other.
"""

from .manager import Participant, SequenceLayout
from .method import LayoutMethod
from .state import BatchLayout, LayerRecord, layout_from_rows, row_slices

__all__ = ["BatchLayout", "LayerRecord", "LayoutMethod", "Participant", "SequenceLayout", "layout_from_rows", "row_slices"]
