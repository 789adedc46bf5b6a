"""Makes docs/trust-map.png from a synthetic case whose answer is known by construction.

Input: a 64x64 gradient with a bar. Regression upscale: its Lanczos x4. Result: that, plus a fine
checker (zero mean: invented detail that the input's size cannot see) in the top-left, and a
recoloured patch (a departure from the input) in the bottom-right.
Run: PYTHONPATH=. python docs/trust_map_example.py
"""

import numpy as np
import torch

from dossr_cli import imageio, trust
from dossr_cli.geometry import lanczos_resize

y, x = np.mgrid[0:64, 0:64].astype(np.float32)
lr = np.stack([x / 63, y / 63, 0.3 + 0.5 * ((x > 20) & (x < 28))], axis=2).astype(np.float32)
reference = lanczos_resize(torch.from_numpy(lr).permute(2, 0, 1)[None], (256, 256))[0].permute(1, 2, 0).numpy()
reference = reference.clip(0, 1)
result = reference.copy()
checker = ((np.indices((96, 96)).sum(axis=0) % 2) * 0.3 - 0.15).astype(np.float32)[..., None]
result[16:112, 16:112] = (result[16:112, 16:112] + checker).clip(0, 1)
result[160:240, 150:240] = (result[160:240, 150:240] + np.array([0.35, -0.2, 0.0], np.float32)).clip(0, 1)
report = trust.trust_report(lr, result, reference)
print(report.numbers().as_json())
picture = trust.trust_map(result, report)
imageio.write_atomic("docs/trust-map.png", imageio.encode_image(picture, None, "png", metadata="none"), overwrite=True)
