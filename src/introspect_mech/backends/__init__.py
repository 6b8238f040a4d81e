"""The same weights (and adapter) in the nnsight and TransformerLens idioms, and the cache through each.

`to_nnsight(model)` wraps the user's model in place (nnsight adds no parameters and changes no
module), `to_transformer_lens(model)` boots a TL 3.9 `TransformerBridge` on a *deep copy* (the bridge
rewrites the modules it is given; any LoRA adapter is merged into the copy). `cache_nnsight` and
`cache_transformer_lens` compute what `activations.cache` computes, for cross-checks and for users of
those libraries; `cache_nnsight(..., remote=True)` runs on NDIF for models too big for one machine.
"""

from .nnsight_backend import cache_nnsight, layers_path, to_nnsight
from .tl_backend import cache_transformer_lens, to_transformer_lens

__all__ = ["to_nnsight", "cache_nnsight", "layers_path", "to_transformer_lens", "cache_transformer_lens"]
