"""The reversal curse, diffusion vs autoregressive on identical data: `python bench/reversal.py [--help]`.

The same as `llada-ds reversal`; the experiment lives in llada_ds/reversal.py.
"""

import sys

from llada_ds.reversal import main

if __name__ == "__main__":
    sys.exit(main())
