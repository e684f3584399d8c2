"""
ECENet (Explicit Class Embeddings, paper Sec. 3): one module per component, each testable alone.

- :mod:`.fr`: Feature Reconstruction and the diversity loss (Eqs. 1-3);
- :mod:`.ece`: first mask head and Explicit Class Extraction (Eqs. 4-5, 8);
- :mod:`.semantics_attention`: Semantics Attention with Mix-FFN (Eqs. 6-7);
- :mod:`.updater`: gated / plus class updater (Eqs. 9-10);
- :mod:`.aggregation`: GhostModule + PixelShuffle aggregation (Sec. 3.5);
- :mod:`.decoder`: the whole decoder; :mod:`.criterion`: the loss (Eqs. 11-12);
- :mod:`.config`: ``add_ecenet_config`` (``MODEL.ECENET.*``; defaults: the authors' released head,
  ``shared/specs/ecenet_released.md``; ``PAPER_LITERAL``: the switches back to the paper-literal reading).

The meta-architecture is :class:`segcls.modeling.meta_arch.ecenet.ECENet`.
"""
from .aggregation import GhostModule, GhostShuffleAggregation
from .config import PAPER_LITERAL, add_ecenet_config, paper_literal_opts
from .criterion import ECENetCriterion
from .decoder import ECENetDecoder
from .ece import ExplicitClassExtraction, ece_levels, ece_pool_size, pyramid_dim
from .fr import FeatureReconstruction, diversity_loss
from .semantics_attention import SemanticsAttention
from .updater import GatedClassUpdater, PlusClassUpdater, build_updater
