"""Attention benchmark: liteattn backends vs FA3, cuDNN / flash SDPA and FlexAttention.

A thin entry point to ``liteattn.bench`` (the same as ``liteattn bench``), e.g. on an H100:

    python bench/harness.py --engines triton,cuda,fa3,cudnn,flash,flex --out bench/results/h100

``python bench/harness.py --help`` lists the flags; docs/benchmarks.rst explains the output.
"""

import sys

from liteattn.bench import main

if __name__ == "__main__":
    sys.exit(main())
