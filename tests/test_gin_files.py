"""Every gin file in the repository parses against the registry, unknown names rejected."""

import glob
import os

import gin
import pytest

from experiments import launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(os.path.relpath(p, REPO)
                   for p in glob.glob(os.path.join(REPO, "gin", "**", "*.gin"), recursive=True))


def test_there_are_gin_files_of_each_kind():
    kinds = {path.split(os.sep)[1] for path in GIN_FILES}
    assert {"models", "data", "experiments", "quickstart.gin"} <= kinds


@pytest.mark.parametrize("path", GIN_FILES)
def test_gin_file_parses(path):
    launch.parse([path], [])
    assert gin.config_str().strip()


@pytest.mark.parametrize("path", [p for p in GIN_FILES if p.startswith(os.path.join("gin", "experiments"))]
                         + [os.path.join("gin", "quickstart.gin")])
def test_experiment_binds_the_required_pieces(path):
    launch.parse([path], [])
    for binding in ("train.model_fn", "train.data_fn", "train.optimizer", "train.loss",
                    "train.batch_size"):
        gin.query_parameter(binding)  # raises ValueError when unbound
