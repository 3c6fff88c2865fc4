"""Load time of checkpoints with the real Qwen2.5-VL tokenizer: the released Rex-Omni's layout and a
plain Qwen2.5-VL base, both on the shrunken 3B config of the tests (tests/real_checkpoints.py).

    python bench/bench_load.py [--repeats 3]

Baseline, in the same process: transformers' own ``AutoTokenizer`` + ``from_pretrained`` on the same
folder (which, for the release, gets the token ids wrong). The ratio is the cost of loading by the
project's rule (declared token ids restored, settings, negative tokens, processor).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import transformers
    from real_checkpoints import write_base, write_released
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from rexomni.checkpoint import load_checkpoint

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        base = write_base(os.path.join(tmp, "base"))
        released = write_released(os.path.join(tmp, "released"), weights_from=base)
        for name, folder in (("released layout", released), ("plain base", base)):
            plain = best_of(args.repeats, lambda f=folder: (AutoTokenizer.from_pretrained(f),
                                                            Qwen2_5_VLForConditionalGeneration.from_pretrained(f)))
            ours = best_of(args.repeats, lambda f=folder: load_checkpoint(f))
            print(f"{name:<16} load_checkpoint {ours:.2f} s   transformers alone {plain:.2f} s   "
                  f"ratio {ours / plain:.2f}x")


if __name__ == "__main__":
    main()
