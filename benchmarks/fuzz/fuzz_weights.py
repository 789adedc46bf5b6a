"""Fuzz the weight readers: damaged bundles through the real loader, damaged checkpoints (zip records,
pickles, pickles that carry code) through the real importer, and a sample of both through the CLI.

    python benchmarks/fuzz/fuzz_weights.py [--bundles 700] [--checkpoints 350] [--cli 20] [--seed 0]

It prints, and counts, what must be zero:
- crash: an exception other than dossr's WeightsError (a generic TypeError, ...), or several lines;
- unhelpful message: one line, but not naming the file and what to do (again/verify/import/download);
- code executed: a pickle's payload created its marker file;
- corrupt accepted: a case that must be refused (see fuzz_weights_mutations) loaded or imported;
- written on refusal: a refused import left its bundle (or a partial one) behind;
- hang: a case that took longer than --hang seconds.
Tiny networks keep a case to a fraction of a second; the files live on /dev/shm when it exists.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_weights_mutations import REFUSE, mutate_bundle, mutate_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ADVICE = ("again", "verify", "import", "download")


def micro_bundle(folder: Path) -> Path:
    """The smallest networks of the real layouts (3.5 MB), as a bundle."""
    from dossr_cli.checkpoint.bundle import save_bundle
    from dossr_cli.networks.config import ModelConfig, RRDBConfig, UNetConfig, VAEConfig
    from dossr_cli.random_weights import random_networks

    config = ModelConfig(unet=UNetConfig(model_channels=32, channel_mult=(1, 1), num_res_blocks=1,
                                         attention_levels=(1,), context_dim=32, head_dim=32),
                         vae=VAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1), rrdb=RRDBConfig(8, 1, 4))
    return save_bundle(random_networks(config), folder)


def authors_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The test model "tinyb" in the authors' layout (tests/data/authors_reference), saved with torch.save."""
    from safetensors.torch import load_file

    from dossr_cli.random_weights import random_state_dict

    data = ROOT / "tests" / "data" / "authors_reference"
    spec = json.loads((data / "tinyb_layout.json").read_text())
    state = random_state_dict([(k, tuple(s)) for k, s in spec["params"]], spec["seed"])
    state.update(load_file(str(data / "tinyb_buffers.safetensors")))
    torch.save(state, path)
    return state


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def judge(error: BaseException | None, expectation: str, file_hint: str) -> str | None:
    """None if the outcome is right, else the kind of finding."""
    from dossr_cli.errors import WeightsError

    if error is None:
        return "corrupt accepted" if expectation == REFUSE else None
    if isinstance(error, Hang):
        return "hang"
    if not isinstance(error, WeightsError) or "\n" in str(error):
        return "crash"  # a generic exception, or a message of several lines
    if file_hint not in str(error) or not any(word in str(error) for word in ADVICE):
        return "unhelpful message"  # one line, but not naming the file and what to do
    return None


def run_case(kind: str, action, expectation: str, file_hint: str, hang: int, findings: list, stats: dict,
             what: str) -> BaseException | None:
    signal.alarm(hang)
    started = time.perf_counter()
    try:
        action()
        error = None
    except BaseException as caught:
        if isinstance(caught, KeyboardInterrupt):
            raise
        error = caught
    finally:
        signal.alarm(0)
    stats["slowest"] = max(stats["slowest"], time.perf_counter() - started)
    stats[f"{kind} {'accepted' if error is None else 'refused'}"] += 1
    verdict = judge(error, expectation, file_hint)
    if verdict:
        findings.append((verdict, kind, what, f"{type(error).__name__}: {str(error)[:300]}" if error else "loaded"))
    return error


def fuzz_bundles(count: int, work: Path, rng: random.Random, hang: int, findings: list, stats: dict) -> None:
    from dossr_cli.checkpoint.bundle import load_bundle

    good = micro_bundle(work / "good-bundle")
    load_bundle(good)
    for index in range(count):
        case = work / f"bundle-{index}"
        what, expectation = mutate_bundle(good, case, rng)
        run_case("bundle", lambda case=case: load_bundle(case), expectation, case.name, hang, findings, stats, what)
        shutil.rmtree(case, ignore_errors=True)
        for stray in work.glob(f"{case.name}-outside*"):
            stray.unlink()


def fuzz_checkpoints(count: int, work: Path, rng: random.Random, hang: int, findings: list, stats: dict) -> None:
    from dossr_cli.checkpoint.importer import import_checkpoint

    good = work / "good.ckpt"
    state = authors_checkpoint(good)
    markers = work / "markers"
    markers.mkdir()
    for index in range(count):
        case, out, marker = work / f"ckpt-{index}.ckpt", work / f"out-{index}", markers / f"ran-{index}"
        try:
            what, expectation = mutate_checkpoint(state, good, case, marker, rng)
        except (pickle_errors()) as error:  # a payload this pickle protocol cannot express: draw again
            stats["cases redrawn"] += 1
            print(f"  (redrawn: {type(error).__name__})", file=sys.stderr)
            continue
        stats["checkpoint carrying code"] += "payload" in what
        error = run_case("checkpoint", lambda case=case, out=out: import_checkpoint(case, out), expectation,
                         case.name, hang, findings, stats, what)
        if marker.exists():
            findings.append(("code executed", "checkpoint", what, str(marker)))
        if error is not None and (out.exists() or any(work.glob(f".{out.name}.partial-*"))):
            findings.append(("written on refusal", "checkpoint", what, str(out)))
        case.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)


def pickle_errors() -> tuple[type[BaseException], ...]:
    import pickle

    return pickle.PicklingError, AttributeError, TypeError


def fuzz_cli(count: int, work: Path, rng: random.Random, findings: list, stats: dict) -> None:
    """A sample through the real command line: exit code 1, one stderr line, nothing written."""
    good_bundle, good_ckpt = work / "good-bundle", work / "good.ckpt"
    state = torch.load(good_ckpt, weights_only=True)
    env = {**os.environ, "DOSSR_CACHE_DIR": str(work / "cli-cache"), "PYTHONPATH": str(ROOT)}
    from PIL import Image

    image = work / "in.png"
    Image.new("RGB", (16, 16), (100, 150, 200)).save(image)
    for index in range(count):
        if index % 2 == 0:
            case = work / f"cli-bundle-{index}"
            what, expectation = mutate_bundle(good_bundle, case, rng)
            out = work / f"cli-out-{index}.png"
            command = ["upscale", str(image), "-o", str(out), "--weights", str(case), "--steps", "1"]
        else:
            case, out = work / f"cli-{index}.ckpt", work / f"cli-out-{index}"
            try:
                what, expectation = mutate_checkpoint(state, good_ckpt, case, work / "markers" / f"cli-{index}", rng)
            except pickle_errors():
                continue
            command = ["weights", "import", str(case), "--out", str(out)]
        done = subprocess.run([sys.executable, "-m", "dossr_cli", *command], env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        stats[f"cli {'accepted' if done.returncode == 0 else 'refused'}"] += 1
        lines = done.stderr.strip().splitlines()
        if done.returncode == 0 and expectation == REFUSE:
            findings.append(("corrupt accepted", "cli", what, done.stderr[-300:]))
        elif done.returncode != 0 and (done.returncode != 1 or len(lines) != 1 or "Traceback" in done.stderr
                                       or case.name not in done.stderr or "run with --debug" in done.stderr):
            findings.append(("crash", "cli", what, f"exit {done.returncode}: {done.stderr[-300:]}"))
        elif done.returncode != 0 and out.exists():
            findings.append(("written on refusal", "cli", what, str(out)))
        shutil.rmtree(case, ignore_errors=True) if case.is_dir() else case.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=700)
    parser.add_argument("--checkpoints", type=int, default=350)
    parser.add_argument("--cli", type=int, default=20, help="Cases also run through `dossr` subprocesses.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang", type=int, default=60, help="Seconds after which a case counts as a hang.")
    parser.add_argument("--workdir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="dossr-fuzz-weights-", dir=args.workdir))
    os.environ["DOSSR_CACHE_DIR"] = str(work / "cache")
    findings: list[tuple[str, str, str, str]] = []
    stats: collections.Counter = collections.Counter(slowest=0.0)
    started = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(work)  # a payload that writes relative paths writes here
    try:
        fuzz_bundles(args.bundles, work, rng, args.hang, findings, stats)
        fuzz_checkpoints(args.checkpoints, work, rng, args.hang, findings, stats)
        fuzz_cli(args.cli, work, rng, findings, stats)
        stray = [p.name for p in work.iterdir() if p.name.startswith(("pwned", "ran-"))]
        findings += [("code executed", "any", "stray file", name) for name in stray]
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    for verdict, kind, what, detail in findings:
        print(f"{verdict:18} {kind:10} {what:40} {detail}")
    totals = collections.Counter(verdict for verdict, *_ in findings)
    summary = {"weight_files": args.bundles + args.checkpoints + args.cli - stats["cases redrawn"],
               "seconds": round(time.perf_counter() - started), "slowest_case_s": round(stats.pop("slowest"), 2),
               **{k: stats[k] for k in sorted(stats)},
               **{k: totals.get(k, 0) for k in ("crash", "unhelpful message", "code executed", "corrupt accepted",
                                                "written on refusal", "hang")}}
    print(json.dumps(summary))
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
