"""Dataset ownership verification: mark a data set, then test whether a suspect model was trained on it.

    from poisonlab.ownership import mark, verify
    result = mark("taggants", images, labels, seed=0)       # or "backdoor"
    result.key.save("owner.key")                             # private, 0600, never in the published tree
    verdict = verify("owner.key", suspect_model)             # or verify(key, command="python api.py {}")
    verdict.marked, verdict.p_value

Data Taggants (Bouaziz et al. 2024) and the backdoor watermark baseline DVBW (Li et al. 2022).
"""

from .keys import OwnershipKey, load_key, make_keys
from .verify import (EXIT_ERROR, EXIT_MARKED, EXIT_NOT_MARKED, Verdict, answer_queries, load_model,
                     save_model, verify)

__all__ = ["OwnershipKey", "load_key", "make_keys", "verify", "Verdict", "load_model", "save_model",
           "answer_queries", "EXIT_MARKED", "EXIT_NOT_MARKED", "EXIT_ERROR"]

from .mark import MARKERS, Marked, create_marker, mark  # noqa: E402
from .taggants import Taggants  # noqa: E402
from .watermark import BackdoorWatermark  # noqa: E402

__all__ += ["mark", "Marked", "MARKERS", "create_marker", "Taggants", "BackdoorWatermark"]
