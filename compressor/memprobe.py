"""Peak memory of serving a model: a fresh process that opens the model with the agent's own
opener and runs it, as a device's model process would. Run as a module:
``python -m edgeloop.compressor.memprobe MODEL FEEDS.npz THREADS`` prints the peak RSS (MB)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgeloop.agent.runtime import host_profile, open_session, peak_rss_mb


def main(argv: list[str]) -> None:
    import numpy as np

    model, feeds, threads = argv[0], argv[1], int(argv[2])
    session = open_session(Path(model), host_profile(threads))
    with np.load(feeds, allow_pickle=False) as data:
        feed = {name: data[name] for name in data.files}
    for _ in range(10):
        session.run(None, feed)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main(sys.argv[1:])
