"""The ``edgeloop`` command: one module per verb group, over the REST client and the packages
below (``edgeloop-agent``, the device's command, lives in :mod:`edgeloop.agent.cli`)."""
