"""The values the model's options may take, in a module without torch: the command line checks
every option against these before anything heavy is imported, so a usage error comes back at once."""

from __future__ import annotations

ORDERS = (1, 2, 3)  # DoS-SDE solver orders
COLOR_FIXES = ("wavelet", "adain", "none")
DTYPE_NAMES = ("fp32", "fp16", "bf16")
SEED_RANGE = (-(2**63), 2**63 - 1)  # a run seed is hashed as 8 signed bytes
MEMORY_FORMATS = ("auto", "contiguous", "channels-last")  # the networks' layout (devices.channels_last_default)
