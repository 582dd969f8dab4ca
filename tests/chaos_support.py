"""What the chaos tests share: the short CI run's parameters.

The CI run itself (test_chaos_run) and the check that its schedule holds every
required fault (test_chaos_checker) must agree on these.
"""

from __future__ import annotations

CI_SEED = 5
CI_DURATION_S = 35.0
CI_DATA_LOSS_GAP_S = 7.0
