"""batchlab entry point.

    python main.py [--gin_file=F]... [--gin_bindings=B]... [--output_dir=D]

Files and bindings compose in order; with no flags it runs gin/quickstart.gin.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_multi_string("gin_file", [], "Gin files, parsed in order.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings, parsed after the files.")
flags.DEFINE_string("output_dir", "runs", "Parent of the run directories.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from experiments import launch  # after flags: importing TensorFlow is slow

    try:
        launch.launch(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.output_dir)
    except launch.ConfigError as error:
        sys.exit(f"batchlab: configuration error: {error}")
    except (ValueError, FileNotFoundError, KeyError) as error:
        sys.exit(f"batchlab: error: {error}")


if __name__ == "__main__":
    app.run(main)
