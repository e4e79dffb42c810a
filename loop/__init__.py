"""The closed loop: devices' measurements calibrate a cost model per device class and pick
what the compressor ships next, round after round (see ``docs/loop.md``).

- :mod:`~edgeloop.loop.candidates`: the search's models, timed on this host;
- :mod:`~edgeloop.loop.costmodel`: features, calibration and predictions per class;
- :mod:`~edgeloop.loop.decide`: one class's next step, pure;
- :mod:`~edgeloop.loop.driver`: rounds over the control plane's REST client.

The loop talks to the control plane only through :class:`edgeloop.server.client.ApiClient`.
"""

from edgeloop.loop.candidates import Candidate, CandidatePool, variant_name
from edgeloop.loop.decide import ClassState, Decision, Measured, decide, within_budget
from edgeloop.loop.driver import Loop, LoopResult, RoundRecord

__all__ = [
    "Candidate",
    "CandidatePool",
    "ClassState",
    "Decision",
    "Loop",
    "LoopResult",
    "Measured",
    "RoundRecord",
    "decide",
    "variant_name",
    "within_budget",
]
