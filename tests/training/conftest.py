import sys
from pathlib import Path

# the kernel conformance catalogue (formats, stored tensors, the interpreter runner) is shared with tests/kernels
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
