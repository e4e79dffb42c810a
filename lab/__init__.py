"""The whole system on one machine: the demo, a local broker and process launchers, emulated
device classes, the agent's fault campaigns and the benchmarks (``edgeloop bench NAME``).

Nothing in production depends on this package; it sits above the loop and below the CLI.
"""
