"""`python -m loadtests.flamegraph STACKS OUT.svg`: a small flame graph SVG from collapsed stacks (py-spy's `--format
raw`: one `frame;frame;... count` per line), frames under a share of the samples left out so the file stays small."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

WIDTH = 1200
ROW = 16
FONT = 11
CHAR_W = 6.2


@dataclass
class Node:
    name: str
    count: int = 0
    children: dict[str, Node] = field(default_factory=dict)


def read_stacks(path: Path) -> Node:
    """Line numbers dropped, so that a function's samples from several lines merge into one frame."""
    root = Node("all")
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        root.count += samples
        node = root
        for frame in stack.split(";"):
            name = re.sub(r":\d+\)$", ")", frame)
            node = node.children.setdefault(name, Node(name))
            node.count += samples
    return root


def colour(name: str) -> str:
    if "server/" in name or "engine/" in name:
        return "rgb(230,120,60)"  # CodeFace's own code
    if "vllm/" in name:
        return "rgb(90,150,220)"
    return f"rgb(240,{170 + sum(name.encode()) % 60},80)"


def render(root: Node, title: str, min_share: float) -> str:
    rects: list[str] = []
    depth_max = 0

    def place(node: Node, x: float, depth: int) -> None:
        nonlocal depth_max
        width = WIDTH * node.count / root.count
        if node.count / root.count < min_share:
            return
        depth_max = max(depth_max, depth)
        share = 100 * node.count / root.count
        label = node.name if len(node.name) * CHAR_W < width - 4 else node.name[: max(0, int((width - 4) / CHAR_W) - 2)]
        rects.append(f'<g><title>{escape(node.name)} ({node.count} samples, {share:.1f}%)</title>'
                     f'<rect x="{x:.1f}" y="{{y{depth}}}" width="{width:.1f}" height="{ROW - 1}" '
                     f'fill="{colour(node.name)}"/>'
                     + (f'<text x="{x + 2:.1f}" y="{{t{depth}}}">{escape(label)}</text>' if len(label) > 2 else "")
                     + "</g>")
        child_x = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            place(child, child_x, depth + 1)
            child_x += WIDTH * child.count / root.count

    place(root, 0.0, 0)
    height = (depth_max + 1) * ROW + 40
    positions = {}
    for depth in range(depth_max + 1):
        y = height - 10 - (depth + 1) * ROW
        positions[f"y{depth}"] = str(y)
        positions[f"t{depth}"] = str(y + FONT)
    body = "\n".join(rect.format(**positions) for rect in rects)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="monospace" '
            f'font-size="{FONT}"><rect width="100%" height="100%" fill="white"/>'
            f'<text x="4" y="16" font-size="13">{escape(title)} ({root.count} samples)</text>\n{body}\n</svg>\n')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.flamegraph", description=__doc__)
    parser.add_argument("stacks", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--title", default="")
    parser.add_argument("--min-share", type=float, default=0.004, help="leave out frames under this share")
    args = parser.parse_args(argv)
    args.out.write_text(render(read_stacks(args.stacks), args.title or args.stacks.name, args.min_share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
