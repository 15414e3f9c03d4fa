"""Where a stage's time goes, from the py-spy records bench/gpu_profile.sh gathered beside bench/gpu.py.

    python bench/spy_summary.py spy.txt [--stage composite] [--streams 8] [--top 20]

Records of the same stage (and stream count) are added together. For each: the share of samples in each
function of anonengine/services, counted once per sample wherever it is on the stack (inclusive), and
the functions the samples were in (self), so both "which step of ours" and "which library call" show.
Samples of a thread that was idle (py-spy --nonblocking leaves idle threads out unless asked) are not there.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict

HEADER = re.compile(r"^=== t=(\d+) s, streams (\d+), stage (\w+), pid (\d+)(.*)$")
OURS = ("anonengine/", "services/")


def records(path: str):
    """(stage, streams, {stack: samples}) for each record in the file."""
    stage = streams = None
    stacks: Counter = Counter()
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            match = HEADER.match(line)
            if match:
                if stage is not None:
                    yield stage, streams, stacks
                stage, streams, stacks = match[3], int(match[2]), Counter()
                if match[5]:  # "py-spy failed"
                    stage = None
                continue
            if stage is None or not line.strip():
                continue
            stack, _, count = line.rpartition(" ")
            if count.isdigit():
                stacks[stack] += int(count)
    if stage is not None:
        yield stage, streams, stacks


def frame_name(frame: str) -> str:
    """'func (file.py:123)' -> 'func (file.py)': lines of one function counted together."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def summarise(stacks: Counter, top: int) -> None:
    total = sum(stacks.values())
    inclusive: Counter = Counter()
    leaf: Counter = Counter()
    for stack, n in stacks.items():
        frames = [frame_name(f) for f in stack.split(";")]
        for name in dict.fromkeys(f for f in frames if any(o in f for o in OURS)):
            inclusive[name] += n
        leaf[frames[-1]] += n
    print(f"  {total} samples")
    print("  inclusive, ours:")
    for name, n in inclusive.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {name}")
    print("  self:")
    for name, n in leaf.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spy", help="the file bench/gpu_profile.sh wrote")
    parser.add_argument("--stage", help="only this stage (composite, capture, encode, detect)")
    parser.add_argument("--streams", type=int, help="only records taken while this many streams ran")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    grouped: dict[tuple[str, int], Counter] = defaultdict(Counter)
    for stage, streams, stacks in records(args.spy):
        if (args.stage and stage != args.stage) or (args.streams and streams != args.streams):
            continue
        grouped[(stage, streams)].update(stacks)
    for (stage, streams), stacks in sorted(grouped.items()):
        print(f"{stage}, {streams} streams:")
        summarise(stacks, args.top)


if __name__ == "__main__":
    main()
