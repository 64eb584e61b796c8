"""Whether the oneDNN tests may skip: not under SYNTHJAX_REQUIRE_ONEDNN=1 (set by .ci/run where the kernels
can build), so CI cannot go green with the library silently missing."""
import os

import pytest

from synthjax.kernels import onednn

REQUIRED = os.environ.get("SYNTHJAX_REQUIRE_ONEDNN") == "1"
# Formulation lists include "onednn" where it runs, and wherever it is required (then failing loudly).
ONEDNN = ["onednn"] if onednn.available() or REQUIRED else []
needs_onednn = pytest.mark.skipif(not onednn.available() and not REQUIRED,
                                  reason=f"oneDNN: {onednn.unavailable_reason()} (SYNTHJAX_REQUIRE_ONEDNN=1 makes this fail)")
