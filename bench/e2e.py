"""End-to-end comparison of a diffusers video pipeline, dense vs liteattn (same as ``liteattn e2e``):

    python bench/e2e.py --model /models/Wan2.1-T2V-1.3B-Diffusers --steps 50 --threshold -6 --out e2e/wan13b

``python bench/e2e.py --help`` lists the flags; docs/integrations.rst explains the output.
"""

import sys

from liteattn.integrations.e2e import main

if __name__ == "__main__":
    sys.exit(main())
