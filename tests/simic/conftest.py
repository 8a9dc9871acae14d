"""One torch thread per test process: Simic's workers run that way, and the shared cores stay usable."""

import torch

torch.set_num_threads(1)
