"""How easy the code is to change, measured at any git revision: the longest functions, and the places that
name one schedule or one built-in model (what adding another one would touch).

    python -m benchmarks.code_shape                 # this checkout (HEAD)
    python -m benchmarks.code_shape --rev 63d04ae   # an older revision, read from git

A "place" is a top-level definition (function, class, or assignment) of a Python file outside tests/ and
benchmarks/ whose source names the item as a quoted string or a word, plus every data file that names it.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess

CODE_DIRS = ("lrbs", "service", "worker", "migrations")


def files_at(rev: str) -> dict[str, str]:
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev], capture_output=True, text=True, check=True)
    out = {}
    for name in names.stdout.split():
        if name.split("/")[0] in CODE_DIRS and name.endswith((".py", ".json")):
            out[name] = subprocess.run(["git", "show", f"{rev}:{name}"], capture_output=True, text=True).stdout
    return out


def longest_functions(files: dict[str, str], most: int) -> list[tuple[int, str]]:
    found = []
    for name, text in files.items():
        if not name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
                found.append((node.end_lineno - node.lineno + 1, f"{name}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)[:most]


def places_naming(files: dict[str, str], item: str) -> list[str]:
    pattern = re.compile(rf"\b{re.escape(item)}\b")
    places = []
    for name, text in files.items():
        if name.endswith(".json"):
            if pattern.search(text):
                places.append(f"{name} (data)")
            continue
        for node in ast.parse(text).body:
            source = ast.get_source_segment(text, node) or ""
            if pattern.search(source):
                label = getattr(node, "name", None) or ast.unparse(node).split("=")[0].strip()[:40]
                places.append(f"{name}:{node.lineno} {label}")
    return places


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument("--most", type=int, default=8)
    parser.add_argument("--schedule", default="cosine", help="a schedule to count the places of")
    parser.add_argument("--model", default="resnet", help="a built-in model to count the places of")
    args = parser.parse_args()
    files = files_at(args.rev)
    print(f"## {args.rev}: the {args.most} longest functions\n\n| lines | function |\n|---|---|")
    for lines, where in longest_functions(files, args.most):
        print(f"| {lines} | `{where}` |")
    for kind, item in (("schedule", args.schedule), ("built-in model", args.model)):
        places = places_naming(files, item)
        touched = sorted({p.split(":")[0].split(" ")[0] for p in places})
        print(f"\n{kind} {item!r}: {len(places)} places in {len(touched)} files")
        for place in places:
            print(f"- `{place}`")


if __name__ == "__main__":
    main()
