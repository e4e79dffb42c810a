"""edgeloop device agent: receives its desired model over MQTT, verifies, validates and runs it.

Public surface: :class:`~edgeloop.agent.daemon.Agent`, :class:`~edgeloop.agent.config.AgentConfig`
and the wire contract in :mod:`edgeloop.agent.protocol`. Installs alone with ``edgeloop[agent]``
and never imports torch, the server or the compressor.
"""

__version__ = "0.1.0"
