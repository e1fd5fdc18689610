import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lowbit.errors import MissingTokenizerWarning

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/, so test modules can `import helpers`

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("LOWBIT_CPU_TUNE", "0")  # kernels by static priority: the same choice on every machine


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=MissingTokenizerWarning)  # tiny test models have none
        yield
