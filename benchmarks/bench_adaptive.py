"""What acting on the measured noise costs: an adaptive-batch run (and AdaScale) against the same
batch sizes trained by a fixed schedule.

    python benchmarks/bench_adaptive.py [--repeats 3] [--epochs 5]

Arms, each trained through the real runner (``experiments.run.runner.train``) on the reference
MLP 784-512-512-10 (8192 synthetic rows, b = 32, SGD), the default measurement set on in every
arm:

- **adaptive**: ``@adaptive_batch_size()`` from B = 64, c = 0.1, B_max = 1024, a decision every 10
  updates. The step samples the noise scale on every update (k + 1 squared-norm passes), the
  controller reads it every 10 updates, and each change of B starts a new input iterator.
- **replay**: the stages the first adaptive run decided, trained as a fixed
  ``@batch_size_schedule(batch_sizes=..., unit='updates')``: the same updates on the same batch
  sizes, the noise scale sampled only on the logged updates. adaptive / replay is the cost of the
  adaptivity itself.
- **replay + AdaScale**: the replay with ``@adascale()`` (the gain computed in every update, the
  noise scale sampled on every update): the cost of AdaScale on a run whose batch changes.

Rounds alternate the arms (the order flips every round). Reported: wall seconds per 1000
examples over epochs 2 and later (the first epoch, which traces the step, is dropped; an epoch
is timed from its start to its end, validation and measurements included), the medians over
rounds, and each arm's ratio to the replay. Prints a markdown table.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
from absl import logging  # noqa: E402

from experiments import launch  # noqa: E402
from experiments.run import runner  # noqa: E402

BASE_GIN = ["gin/base.gin", "gin/models/mlp.gin"]
BASE = ["train.data_fn = @synthetic_classification",
        "synthetic_classification.num_examples = 10240",
        "synthetic_classification.input_shape = (784,)",
        "synthetic_classification.num_classes = 10",
        "mlp.hidden_units = (512, 512)", "train.verbose = 0",
        "keras.optimizers.SGD.learning_rate = 0.05",
        "train.batch_size = 64", "train.micro_batch_size = 32"]
ADAPTIVE = ["train.batch_size_schedule = @adaptive_batch_size()",
            "adaptive_batch_size.scale = 0.1", "adaptive_batch_size.max_batch_size = 1024",
            "adaptive_batch_size.every_n_updates = 10"]


def replay_bindings(stages):
    """A fixed schedule with the adaptive run's stages (they must grow)."""
    sizes = [stage["batch_size"] for stage in stages]
    if any(later <= earlier for earlier, later in zip(sizes, sizes[1:])):
        raise SystemExit(f"The adaptive run's batch did not only grow ({sizes}); a fixed "
                         "schedule cannot replay it. Change the setup.")
    return ["train.batch_size_schedule = @batch_size_schedule()",
            f"batch_size_schedule.boundaries = {[s['update'] for s in stages[1:]]}",
            f"batch_size_schedule.batch_sizes = {sizes[1:]}",
            "batch_size_schedule.unit = 'updates'"]


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each epoch (listed last: every other callback's epoch work included)."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def train(bindings, epochs, output_dir):
    """One run through the runner; returns (result dict, seconds of epochs 2 ...)."""
    launch.parse(BASE_GIN, BASE + [f"train.epochs = {epochs}"] + bindings)
    timer = EpochTimer()
    result = runner.train(output_dir=output_dir, experiment="bench_adaptive",
                          extra_callbacks=[timer])
    return result, sum(timer.seconds[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    output_dir = tempfile.mkdtemp(prefix="bench_adaptive_")
    first, _ = train(ADAPTIVE, args.epochs, output_dir)
    stages = first["batch_size_stages"]
    replay = replay_bindings(stages)
    arms = {"adaptive": ADAPTIVE, "replay": replay,
            "replay + AdaScale": replay + ["train.learning_rate_scaling = @adascale()"]}
    seconds = {name: [] for name in arms}
    updates = {}
    for round_index in range(args.repeats):
        order = list(arms) if round_index % 2 == 0 else list(reversed(arms))
        for name in order:
            result, timed = train(arms[name], args.epochs, output_dir)
            examples = result["num_train_examples"] * (args.epochs - 1)
            seconds[name].append(1000.0 * timed / examples)
            updates[name] = result["updates"]
    print(f"\nStages decided by the adaptive run (update: B): "
          f"{', '.join(str(s['update']) + ': ' + str(s['batch_size']) for s in stages)}; "
          f"{first['updates']} updates over {args.epochs} epochs, {time.strftime('%Y-%m-%d')}\n")
    print("| arm | updates | s per 1000 examples (each round) | median | vs replay |")
    print("|---|---|---|---|---|")
    base = statistics.median(seconds["replay"])
    for name in arms:
        median = statistics.median(seconds[name])
        rounds = ", ".join(f"{value:.3f}" for value in seconds[name])
        print(f"| {name} | {updates[name]} | {rounds} | {median:.3f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # TensorFlow may wait on finished runs' iterators at interpreter exit
