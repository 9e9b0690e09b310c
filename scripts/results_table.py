#!/usr/bin/env python
"""The README's results table, rendered from the reports `petclassifier evaluate --json` wrote into docs/results/,
so that one model has one set of figures wherever they are shown.

    python scripts/results_table.py           # rewrite the table in README.md
    python scripts/results_table.py --check   # exit 1 where README.md's table is not the rendering
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START = "<!-- results: rendered by scripts/results_table.py from docs/results/*.json -->"
END = "<!-- end of results -->"


def row(report: dict) -> str:
    c = report["calibration"]
    photos = f"{report['photos']:,}"
    return (f"| {report['dataset']} | {report['task']} | {report['model']} | {report['split']} ({photos}) | "
            f"**{report['top1']:.1%}** | {report['mean_per_class_accuracy']:.1%} | {c['ece_before']:.3f} -> "
            f"{c['ece_after']:.3f} (T {c['temperature']:.2f}) |")


def table(folder: Path) -> str:
    """The table of every report in `folder`, in file-name order."""
    reports = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    head = ["| dataset | task | model | split (photos) | top-1 | mean per-class | ECE before -> after |",
            "|---|---|---|---|---|---|---|"]
    return "\n".join(head + [row(r) for r in reports])


def rendered(readme: str, folder: Path) -> str:
    before, rest = readme.split(START + "\n", 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{table(folder)}\n{END}{after}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md's table is up to date")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = rendered(text, ROOT / "docs" / "results")
    if args.check:
        if new != text:
            print("README.md's results table differs from docs/results/*.json: run scripts/results_table.py",
                  file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
