"""`petclassifier kind`: the kind of animal in a photo from the pretrained network's ImageNet classifier, with no
checkpoint and no training; text, --json and --jsonl as `predict` prints them, and the same from Python."""

from __future__ import annotations

import json

from petclassifier import kind_classifier
from petclassifier.cli import main
from petclassifier.inference.animals import TOP_KINDS, kind_answer
from petclassifier.models.kinds import KIND_NAMES

from .conftest import SAMPLE, SHARED, needs_shared

IMAGES = SAMPLE / "oxford-iiit-pet" / "images"


def test_kind_names_cats_and_dogs_in_text_json_and_jsonl_and_an_error_entry_for_a_broken_file(tmp_path, capsys):
    pug, persian = sorted(IMAGES.glob("pug_*.jpg"))[0], sorted(IMAGES.glob("Persian_*.jpg"))[0]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    assert main(["kind", str(pug), str(persian), "--json", "--workers", "0"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["kind"] for a in answers] == ["dog", "cat"] and all(a["probability"] > 0.5 for a in answers)
    assert all(set(a) == {"path", "kind", "probability", "kinds"} and len(a["kinds"]) == TOP_KINDS for a in answers)
    assert all(a["kinds"][0] == {"kind": a["kind"], "probability": a["probability"]} for a in answers)
    assert sum(k["probability"] for k in answers[0]["kinds"]) <= 1 + 1e-6

    assert main(["kind", str(pug), str(tmp_path / "broken.jpg"), "--jsonl", "--workers", "0"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["kind"] == "dog" and set(lines[1]) == {"path", "error"}

    assert main(["kind", str(persian), "--workers", "0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{persian}: cat ") and line.count("%") == TOP_KINDS
    assert main(["kind", str(tmp_path / "broken.jpg"), "--workers", "0"]) == 1  # nothing readable


def test_kind_from_python_matches_the_command_and_knows_every_kind():
    classifier = kind_classifier(device="cpu")
    assert classifier.class_names == KIND_NAMES and len(KIND_NAMES) == 15
    pug = sorted(IMAGES.glob("pug_*.jpg"))[0]
    answer = kind_answer(classifier.predict(str(pug), top_k=TOP_KINDS), str(pug))
    assert answer["kind"] == "dog" and answer["path"] == str(pug)


@needs_shared
def test_kind_calls_things_no_animal_and_a_cat_a_cat(capsys):
    objects = sorted((SHARED / "not-pets").iterdir())[:6]
    cats = sorted((SHARED / "cats-vs-dogs" / "val" / "cats").iterdir())[:4]
    assert main(["kind", *map(str, objects + cats), "--json", "--workers", "0"]) == 0
    kinds = [a["kind"] for a in json.loads(capsys.readouterr().out)]
    assert kinds[:6].count("no animal") >= 5 and kinds[6:] == ["cat"] * 4, kinds
