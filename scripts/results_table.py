#!/usr/bin/env python
"""The tables rendered from the JSON that measured them, so that one fact has one figure wherever it is shown: the
README's results (the reports scripts/oxford_results.py wrote into docs/results/) and docs/recipe.md's recipe
choices (docs/recipe-choice.json, written by scripts/choose_recipe.py).

    python scripts/results_table.py           # rewrite both tables
    python scripts/results_table.py --check   # exit 1 where a table is not the rendering of its JSON
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START = "<!-- results: rendered by scripts/results_table.py from docs/results/*.json -->"
END = "<!-- end of results -->"
CHOICE_START = "<!-- recipe choices: rendered by scripts/results_table.py from docs/recipe-choice.json -->"
CHOICE_END = "<!-- end of recipe choices -->"
CURVE_START = "<!-- learning curves: rendered by scripts/results_table.py from docs/learning-curve.json -->"
CURVE_END = "<!-- end of learning curves -->"
FLAG_START = "<!-- not a pet: rendered by scripts/results_table.py from docs/not-a-pet.json -->"
FLAG_END = "<!-- end of not a pet -->"


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


def choice_table(path: Path) -> str:
    """docs/recipe-choice.json as a table: each question's options, their cross-validated scores, the one chosen."""
    choices = json.loads(path.read_text())
    lines = ["| question | option | CV accuracy (mean of 3 cuts) | range | NLL after T | chosen |",
             "|---|---|---|---|---|---|"]
    for question, answer in choices["questions"].items():
        for r in answer["options"]:
            chosen = "**yes**" if r["option"] == answer["chosen"] else ""
            lines.append(f"| {question} | {r['option']} | {r['accuracy']:.2%} | {min(r['accuracies']):.1%}-"
                         f"{max(r['accuracies']):.1%} | {r['nll']:.3f} | {chosen} |")
    return "\n".join(lines)


def curve_table(path: Path) -> str:
    """docs/learning-curve.json as a table: each set and k, the recipe and the probe, mean over the draws."""
    rows = json.loads(path.read_text())["rows"]
    lines = ["| set | k a class | train photos | test photos | recipe: test accuracy | probe: test accuracy | "
             "recipe: ECE | probe: ECE | recipe - probe |", "|---|---|---|---|---|---|---|---|---|"]

    def accuracy(values: list[float]) -> str:
        mean = sum(values) / len(values)
        return f"{mean:.1%}" if len(values) == 1 else f"{mean:.1%} ({min(values):.1%}-{max(values):.1%})"

    for key in dict.fromkeys((r["set"], r["k"]) for r in rows):
        draws = [r for r in rows if (r["set"], r["k"]) == key]
        recipe, probe = ([r[side]["accuracy"] for r in draws] for side in ("recipe", "probe"))
        ece = {side: sum(r[side]["ece"] for r in draws) / len(draws) for side in ("recipe", "probe")}
        gap = (sum(recipe) - sum(probe)) / len(draws) * 100
        lines.append(f"| {key[0]} | {key[1]} | {draws[0]['train_photos']:,} | {draws[0]['test_photos']:,} | "
                     f"{accuracy(recipe)} | {accuracy(probe)} | {ece['recipe']:.3f} | {ece['probe']:.3f} | "
                     f"{gap:+.1f} points |")
    return "\n".join(lines)


def flag_table(path: Path) -> str:
    """docs/not-a-pet.json as a table: each rule's threshold and the share it flags of each set of photos."""
    found = json.loads(path.read_text())
    lines = ["| pet kinds (model) | threshold | chosen on: Oxford trainval pets (1,000) | chosen on: not-pets 1-100 | "
             "Oxford test pets (864) | cats-vs-dogs `val/` (500) | not-pets 101-199 (99) |",
             "|---|---|---|---|---|---|---|"]
    models = {"cats and dogs": "cats and dogs (breed, species)", "animals": "every animal (your folders)"}
    for kinds, rule in found["kinds"].items():
        f = rule["flagged"][str(rule["chosen"])]
        lines.append(f"| {models[kinds]} | {rule['chosen']} | {f['choosing']['pets']:.1%} | "
                     f"{f['choosing']['not pets']:.0%} | {f['measured']['pets']:.1%} | "
                     f"{f['measured']['cats-vs-dogs val/']:.1%} | "
                     f"**{f['measured']['not pets']:.1%}** |")
    return "\n".join(lines)


def between(text: str, start: str, end: str, table: str) -> str:
    """`text` with what stands between the markers `start` and `end` replaced by `table`."""
    before, rest = text.split(start + "\n", 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{table}\n{end}{after}"


def rendered(readme: str, folder: Path) -> str:
    """README.md's text with its results table rendered from the reports in `folder`."""
    return between(readme, START, END, table(folder))


def rendered_choices(recipe: str, docs: Path) -> str:
    """docs/recipe.md's text with its recipe-choice and learning-curve tables rendered from the JSON in `docs`."""
    recipe = between(recipe, CHOICE_START, CHOICE_END, choice_table(docs / "recipe-choice.json"))
    return between(recipe, CURVE_START, CURVE_END, curve_table(docs / "learning-curve.json"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the tables are up to date")
    args = parser.parse_args()
    docs = ROOT / "docs"
    pages = [(ROOT / "README.md", lambda text: rendered(text, docs / "results")),
             (docs / "insight.md",
              lambda text: between(text, FLAG_START, FLAG_END, flag_table(docs / "not-a-pet.json"))),
             (docs / "recipe.md", lambda text: rendered_choices(text, docs))]
    for page, render in pages:
        text = page.read_text()
        new = render(text)
        if args.check and new != text:
            print(f"{page.name}'s table differs from its JSON: run scripts/results_table.py", file=sys.stderr)
            return 1
        if not args.check:
            page.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
