"""Stateful streams over windows of T against full-length backpropagation of the same sequences.

    python benchmarks/bench_stateful.py [--streams 32] [--length 4000] [--window 50] [--k 8]
        [--units 256] [--vocab 64] [--epochs 2]

The memory-light way to train an LSTM on long text is a stateful LSTM over windows of T steps
(truncated BPTT): activations of one window are alive at a time, whatever the length of the
streams. This script trains the same S sequences of L steps (random token ids) three ways, each
configuration in its own child process:

- ``stateful T``: batchlab's stream pipeline (``stream_layout.window_length = T``), the stateful
  model, one update per window, state carried (the runner's model, step and callbacks);
- ``stateful T, k=8``: the same with 8 windows per update (the train step's time-window loop);
- ``full BPTT``: a stateless LSTM over the whole (S, L) batch, one update per epoch.

Each child reports its peak RSS (``getrusage``), its RSS just before training (the growth is what
training added: activations kept for the backward pass) and the median time of an epoch after
one untimed epoch (tracing). The table gives ratios against ``stateful T``. Timings on a shared
machine are noisy; memory is not.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mb():
    """Current resident set size in MiB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(config):
    """Trains one configuration; prints a JSON line with its measurements."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np

    from experiments.engine import virtual_batch_model
    from experiments.inputs import pipelines as pipelines_lib
    from experiments.inputs import stream_sources
    from experiments.inputs.streams import StreamLayout
    from experiments.models import builders as models
    from experiments.run import stateful as stateful_run

    streams, length, vocab = config["streams"], config["length"], config["vocab"]
    ids = np.random.default_rng(0).integers(0, vocab, size=streams * length + 1)
    is_stateful = config["kind"] == "stateful"
    window = config["window"] if is_stateful else length
    stream_layout = StreamLayout(
        num_streams=streams, window_length=window, num_micro_batches=config["k"], max_offset=0,
        stateful=is_stateful)
    data = stream_sources.stream_series(series=ids, vocabulary_size=vocab, validation_split=0.0,
                                       layout=stream_layout)
    layout, pipelines = pipelines_lib.batched(data, streams)
    keras.utils.set_random_seed(0)
    if is_stateful:
        base = models.stateful_stacked_lstm(data.spec, units=(config["units"],), embedding_dim=32)
    else:
        base = models.stacked_lstm(data.spec, units=(config["units"],), embedding_dim=32,
                                   return_sequences=True)
    model = virtual_batch_model.as_virtual_batch_model(base)
    callbacks = stateful_run.prepare(model, data, layout)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy())

    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    before = _rss_mb()
    model.fit(pipelines.train, epochs=config["epochs"] + 1, verbose=0,
              callbacks=callbacks + [Timer()])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"peak_mb": peak, "before_mb": before,
                      "epoch_s": statistics.median(times[1:]),
                      "updates_per_epoch": pipelines.steps_per_epoch}))


def run_child(config):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(config)],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--length", type=int, default=4000, help="steps per stream (L)")
    parser.add_argument("--window", type=int, default=50, help="window T")
    parser.add_argument("--k", type=int, default=8, help="windows per update of the k row")
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one untimed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    length = args.length // (args.k * args.window) * (args.k * args.window)
    if length < args.k * args.window:
        parser.error("--length must hold at least one update of --k windows of --window steps.")
    args.length = length  # every row trains on the same steps
    common = dict(streams=args.streams, length=args.length, window=args.window,
                  units=args.units, vocab=args.vocab, epochs=args.epochs)
    rows = [
        (f"stateful T={args.window}", dict(common, kind="stateful", k=1)),
        (f"stateful T={args.window}, k={args.k}", dict(common, kind="stateful", k=args.k)),
        (f"full BPTT L={args.length}", dict(common, kind="full", k=1)),
    ]
    results = []
    for name, config in rows:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append((name, run_child(config)))
    base = results[0][1]
    base_growth = max(base["peak_mb"] - base["before_mb"], 1e-9)
    print(f"\nLSTM({args.units}), {args.streams} streams x {args.length} steps, vocabulary "
          f"{args.vocab}; median of {args.epochs} epochs after one untimed epoch.\n")
    print("| configuration | updates/epoch | peak RSS (MiB) | RSS growth in training (MiB) "
          "| s/epoch | peak RSS ratio | growth ratio | time ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results:
        growth = r["peak_mb"] - r["before_mb"]
        print(f"| {name} | {r['updates_per_epoch']} | {r['peak_mb']:.0f} | {growth:.0f} "
              f"| {r['epoch_s']:.2f} | {r['peak_mb'] / base['peak_mb']:.2f} "
              f"| {growth / base_growth:.2f} | {r['epoch_s'] / base['epoch_s']:.2f} |")


if __name__ == "__main__":
    main()
