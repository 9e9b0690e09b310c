"""The doctor: duplicates (exact, resized, across splits), likely wrong labels by confident learning, photos with no
pet, unreadable files; on planted problems in a copy of real photos, and on small made-up inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from petclassifier.cli import main
from petclassifier.doctor import findings

from .conftest import SAMPLE, SHARED, make_folder, needs_shared


def test_confident_learning_names_the_photos_another_class_claims_most_likely_first():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.95, 0.05], [0.1, 0.9],  # photo 3: filed 0, looks 1
                          [0.2, 0.8], [0.1, 0.9], [0.4, 0.6], [0.7, 0.3]])  # photo 7: filed 1, looks 0
    found = findings.confident_learning(probs, labels)
    assert [(i, j) for i, j, _ in found] == [(3, 1), (7, 0)] and found[0][2] == pytest.approx(0.9)


def test_near_duplicates_link_photos_by_features_or_difference_hash_and_chain_them():
    features = torch.eye(6) + 1  # every pair at cosine 0.89: near enough where the hashes say so
    features[1] = features[0] + 0.01  # a copy by its features
    features[5] = -features[2]  # the same hash as 2 below, but nothing alike: not a copy
    hashes = torch.zeros(6, 64, dtype=torch.bool)
    hashes[2:] = torch.rand(4, 64, generator=torch.Generator().manual_seed(0)) > 0.5
    hashes[3] = hashes[2]
    hashes[3, :findings.NEAR_BITS] ^= True  # 6 bits apart: a resized copy
    hashes[4] = hashes[3]
    hashes[4, -3:] ^= True  # 3 bits from 3, 9 from 2: linked to 2 through 3
    hashes[5] = hashes[2]
    assert sorted(map(sorted, findings.near_duplicates(features, hashes, block=2))) == [[0, 1], [2, 3, 4]]


def test_the_difference_hash_of_a_resized_photo_stays_within_the_near_bits(tmp_path):
    from petclassifier.data.cache import decode_images
    from petclassifier.data.transforms import Preprocessing

    pug, persian = (sorted((SAMPLE / "oxford-iiit-pet" / "images").glob(f"{b}_*.jpg"))[0] for b in ("pug", "Persian"))
    img = Image.open(pug)
    img.resize((img.width * 6 // 10, img.height * 6 // 10)).save(tmp_path / "small.jpg", quality=75)
    prep = Preprocessing.for_model("efficientnet_lite2", 260)
    images, bad = decode_images([str(pug), str(tmp_path / "small.jpg"), str(persian)], prep, str(tmp_path), 0)
    hashes = findings.difference_hashes(images)
    assert not bad and (hashes[0] != hashes[1]).sum() <= findings.NEAR_BITS < (hashes[0] != hashes[2]).sum()


def test_doctor_lists_unreadable_files_exact_copies_and_small_classes_and_says_what_to_do(tmp_path, capsys):
    root = make_folder(tmp_path / "shapes", per_class=12)
    (root / "tiny").mkdir()
    for i in range(3):  # a class of 3 photos: too few, and 4x fewer than the others
        shutil.copy(root / "disc" / f"disc_{i}.png", root / "tiny" / f"t{i}.png")
    (root / "square" / "broken.png").write_bytes(b"not a png")
    shutil.copy(root / "disc" / "disc_5.png", root / "disc" / "again.png")
    assert main(["doctor", str(root), "--json", str(tmp_path / "r.json"), "--backend", "torch", "--workers", "0"]) == 0
    found = json.loads((tmp_path / "r.json").read_text())
    assert set(found) >= {"label_issues", "duplicates", "not_pets", "classes", "unreadable"}
    assert found["unreadable"] == [{"path": str(root / "square" / "broken.png"),
                                    "reason": "not an image (unknown or damaged format)"}]
    assert found["classes"] == [{"name": "disc", "photos": 13}, {"name": "square", "photos": 12},
                                {"name": "tiny", "photos": 3}]
    exact = [sorted(d["paths"]) for d in found["duplicates"] if d["kind"] == "exact"]
    assert sorted([str(root / "disc" / "again.png"), str(root / "disc" / "disc_5.png")]) in exact
    assert all(set(f) == {"path", "given", "suggested", "score", "split"} for f in found["label_issues"])
    out = capsys.readouterr().out
    assert "1 unreadable" in out and "fewer than 10 photos (tiny)" in out and "--balance" in out
    from petclassifier import examine  # the same report from Python

    again = examine(root, backend="torch", workers=0)
    assert again["classes"] == found["classes"] and again["duplicates"] == found["duplicates"]
    assert main(["doctor", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no folder {tmp_path / 'nothing'}"


def plant(root, source):
    """A copy of 30 cats and 30 dogs of train/ and 10 of each of val/, then: 4 photos of each class filed under the
    other, 8 val photos copied into train/ (4 exact, 4 at 70% size re-encoded), 4 photos of things put among the
    pets. Returns what was planted."""
    for split, n in (("train", 30), ("val", 10)):
        for kind in ("cats", "dogs"):
            (root / split / kind).mkdir(parents=True)
            for path in sorted((source / split / kind).iterdir())[:n]:
                shutil.copy(path, root / split / kind / path.name)
    moves = [(path, root / "train" / other / path.name) for kind, other in (("cats", "dogs"), ("dogs", "cats"))
             for path in sorted((root / "train" / kind).iterdir())[:4]]
    flipped = [str(path.rename(to)) for path, to in moves]
    copies = []
    val = sorted((root / "val" / "cats").iterdir())[:4] + sorted((root / "val" / "dogs").iterdir())[:4]
    for i, path in enumerate(val):
        copy = root / "train" / path.parent.name / f"copy_{path.name}"
        if i % 2:
            img = Image.open(path)
            img.resize((int(img.width * 0.7), int(img.height * 0.7))).save(copy, quality=80)
        else:
            shutil.copy(path, copy)
        copies.append({str(path), str(copy)})
    objects = sorted((SHARED / "not-pets").iterdir())[:4]
    not_pets = [str(shutil.copy(p, root / "train" / ("cats", "dogs")[i % 2] / p.name)) for i, p in enumerate(objects)]
    return flipped, copies, not_pets


@needs_shared
def test_the_doctor_finds_planted_flips_copies_and_not_pets_in_real_photos(tmp_path, capsys):
    flipped, copies, not_pets = plant(tmp_path / "pets", SHARED / "cats-vs-dogs")
    assert main(["doctor", str(tmp_path / "pets"), "--json", str(tmp_path / "report.json"), "--out",
                 str(tmp_path / "sheets"), "--backend", "torch", "--workers", "0"]) == 0
    found = json.loads((tmp_path / "report.json").read_text())
    issues = {f["path"] for f in found["label_issues"]}
    assert sum(p in issues for p in flipped) >= 0.75 * len(flipped), (flipped, found["label_issues"])
    groups = [set(d["paths"]) for d in found["duplicates"] if d["leakage"]]
    assert sum(any(c <= g for g in groups) for c in copies) >= 0.9 * len(copies), found["duplicates"]
    assert {d["kind"] for d in found["duplicates"]} == {"exact", "near"}
    assert set(not_pets) <= {f["path"] for f in found["not_pets"]}, found["not_pets"]
    # 30 train + 10 val photos, 4 val copies, 2 objects a class
    assert found["classes"] == [{"name": "cats", "photos": 46}, {"name": "dogs", "photos": 46}]
    assert sorted(p.name for p in (tmp_path / "sheets").iterdir()) == ["duplicates.jpg", "label_issues.jpg",
                                                                       "not_pets.jpg"]
    out = capsys.readouterr().out
    assert "across splits" in out and "wrong class" in out and "no pet" in out
    assert {f["path"] for f in found["label_issues"]} | {f["path"] for f in found["not_pets"]} <= \
        {str(p) for p in (tmp_path / "pets").rglob("*") if p.is_file()}


@needs_shared
def test_the_doctor_names_in_the_terminal_the_copies_it_doubts_not_their_originals_and_a_class_of_no_pets_once(
        tmp_path, capsys):
    """cats/ and dogs/ of 20 photos, 3 cats copied into dogs/, a class of 16 things that are not pets, and one of
    those things among the dogs: each finding lists its photos, the originals of the copies are not doubted, the
    class of things is named once and the thing among the dogs is still listed."""
    root = tmp_path / "pets"
    for kind in ("cats", "dogs"):
        (root / kind).mkdir(parents=True)
        for path in sorted((SHARED / "cats-vs-dogs" / "train" / kind).iterdir())[:20]:
            shutil.copy(path, root / kind / path.name)
    (root / "not_pets").mkdir()
    things = sorted((SHARED / "not-pets").iterdir())
    for path in things[:16]:
        shutil.copy(path, root / "not_pets" / path.name)
    originals = sorted((root / "cats").iterdir())[:3]
    copies = [shutil.copy(path, root / "dogs" / f"copy_{path.name}") for path in originals]
    hamper = shutil.copy(next(p for p in things if "hamper" in p.name), root / "dogs")
    assert main(["doctor", str(root), "--backend", "torch", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    doubted = [line.split(": filed under")[0].strip() for line in out.splitlines() if ": filed under" in line]
    assert set(map(str, copies)) <= set(doubted) and not set(map(str, originals)) & set(doubted), out
    assert f"  {hamper}: sees no animal" in out, out
    assert "class not_pets: no pet in 16 of its 16 photos; fine if that is the class" in out, out
    assert "1 photo with no pet in it" in out and "not_pets/" not in out.split("1 photo with no pet")[1], out
    for original, copy in zip(originals, copies):
        assert f"  {original} = {copy} (exact, under cats and dogs)" in out, out
