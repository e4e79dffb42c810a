"""Peak memory of serving a model: a fresh process that imports only onnxruntime and numpy,
opens the model and runs it, as a device's model process would. Run as a module:
``python -m edgeloop.compressor.memprobe MODEL FEEDS.npz THREADS`` prints the peak RSS (MB)."""

from __future__ import annotations

import json
import sys

from edgeloop.agent.runtime import peak_rss_mb


def main(argv: list[str]) -> None:
    import numpy as np
    import onnxruntime as ort

    model, feeds, threads = argv[0], argv[1], int(argv[2])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    with np.load(feeds, allow_pickle=False) as data:
        feed = {name: data[name] for name in data.files}
    for _ in range(10):
        session.run(None, feed)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    main(sys.argv[1:])
