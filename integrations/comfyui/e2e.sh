#!/usr/bin/env bash
# The node pack in a real ComfyUI, end to end (run by hand: CI has no ComfyUI checkout).
#
#   integrations/comfyui/e2e.sh /path/to/ComfyUI
#
# PYTHON is the python that runs ComfyUI, with ComfyUI's requirements installed (default: python3);
# PORT the port it listens on, on 127.0.0.1 (default 8199); SCREENSHOT=file.png also drives ComfyUI's
# page in Chromium (Playwright in that python): the UI workflow loaded, run there, and pictured.
# The script installs this repository into that python (pip install -e), links the pack into custom_nodes/, puts tiny random-weight networks
# (the real layouts, small widths) in models/dossr/, starts ComfyUI with --cpu, posts the example
# workflow to /prompt, waits for /history and checks the saved image against `dossr upscale`.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 COMFYUI_CHECKOUT" >&2; exit 2; }
comfy=$(cd "$1" && pwd)
[ -f "$comfy/main.py" ] || { echo "$comfy is not a ComfyUI checkout (no main.py)" >&2; exit 2; }
python=${PYTHON:-python3}
port=${PORT:-8199}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

echo "ComfyUI: $comfy ($(git -C "$comfy" rev-parse HEAD 2>/dev/null || cat "$comfy/.commit" 2>/dev/null || echo 'commit unknown'))"
"$python" -m pip install --quiet -e "$repo"
ln -sfn "$here" "$comfy/custom_nodes/dossr"
mkdir -p "$work/input" "$work/output"
"$python" - "$comfy/models/dossr/e2e-tiny" "$work/input/dossr_example.png" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dossr_cli.checkpoint.bundle import save_bundle
from dossr_cli.random_weights import random_networks

bundle, image = Path(sys.argv[1]), Path(sys.argv[2])
if not (bundle / "dossr.json").is_file():
    save_bundle(random_networks(seed=0), bundle)
y, x = np.mgrid[0:48, 0:64].astype(np.float64)
pixels = np.stack([x / 63, y / 47, 0.5 + 0.5 * np.sin((x + y) / 3)], axis=-1)
Image.fromarray((30 + 195 * pixels).astype(np.uint8), "RGB").save(image)
PY

"$python" "$comfy/main.py" --cpu --listen 127.0.0.1 --port "$port" --disable-auto-launch \
    --input-directory "$work/input" --output-directory "$work/output" > "$work/comfyui.log" 2>&1 &
server=$!
if ! "$python" "$here/e2e_check.py" --url "http://127.0.0.1:$port" --workflow "$here/dossr_upscale_api.json" \
        --weights e2e-tiny --input "$work/input/dossr_example.png" --output-dir "$work/output" \
        --bundle "$comfy/models/dossr/e2e-tiny" --log "$work/comfyui.log" ${SCREENSHOT:+--screenshot "$SCREENSHOT"}; then
    echo "--- ComfyUI's log:" >&2
    tail -n 60 "$work/comfyui.log" >&2
    exit 1
fi
grep -i "dossr" "$work/comfyui.log" | head -n 5 || true
