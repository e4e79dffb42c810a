"""edgeloop device agent: receives its desired model over MQTT, verifies, validates and runs it.

Public surface: :class:`~edgeloop.agent.daemon.Agent`, :class:`~edgeloop.agent.config.AgentConfig`,
the wire contract in :mod:`edgeloop.agent.protocol`, and for applications on the device the
local endpoint's client (:mod:`edgeloop.agent.endpoint_client`) and the in-process runtime
(:class:`~edgeloop.agent.local.LocalModel`). Installs alone with ``edgeloop[agent]``
and never imports torch, the server or the compressor.
"""

__version__ = "0.1.0"
