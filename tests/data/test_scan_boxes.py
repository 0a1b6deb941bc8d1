"""COCO boxes past the image edge: clipped to the image, with a note in the problems table."""

from __future__ import annotations

import json

from PIL import Image

from mlfix.data.images import DataRoot, load_image
from mlfix.data.scan import NOTE_STAGES, scan


def coco_scene(tmp_path, boxes, sizes=True):
    folder = tmp_path / "coco"
    folder.mkdir()
    Image.new("RGB", (100, 80), (255, 255, 255)).save(folder / "scene.png")
    image = {"id": 1, "file_name": "scene.png", **({"width": 100, "height": 80} if sizes else {})}
    coco = {"images": [image], "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": box}
                            for i, box in enumerate(boxes, start=1)]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    return folder, tmp_path / "coco.json"


def box_of(samples, sample_id):
    return tuple(samples.set_index("sample_id").loc[sample_id, ["box_x", "box_y", "box_w", "box_h"]])


def test_a_box_past_the_edge_is_clipped_and_noted(tmp_path):
    folder, coco = coco_scene(tmp_path, [[10, 10, 20, 20], [-5, 60, 30, 40]])
    result = scan(folder, coco=coco)
    assert box_of(result.samples, "scene.png#1") == (10, 10, 20, 20)
    assert box_of(result.samples, "scene.png#2") == (0, 60, 25, 20)
    notes = result.problems
    assert notes["sample_id"].tolist() == ["scene.png#2"] and notes["stage"].tolist() == ["clipped"]
    assert "clipped to [0, 60, 25, 20]" in notes["reason"].iloc[0] and "100x80" in notes["reason"].iloc[0]
    assert set(notes["stage"]) <= set(NOTE_STAGES)  # a note: the sample itself was kept
    crop = load_image(DataRoot(folder), result.samples.iloc[1])
    assert crop.size == (25, 20)


def test_without_sizes_in_the_coco_file_the_image_header_bounds_the_box(tmp_path):
    folder, coco = coco_scene(tmp_path, [[90, 70, 20, 20]], sizes=False)
    result = scan(folder, coco=coco)
    assert box_of(result.samples, "scene.png#1") == (90, 70, 10, 10)
    assert result.problems["stage"].tolist() == ["clipped"]


def test_a_box_wholly_outside_the_image_is_skipped_with_its_reason(tmp_path):
    folder, coco = coco_scene(tmp_path, [[150, 10, 20, 20], [10, 10, 20, 20]])
    result = scan(folder, coco=coco)
    assert result.samples["sample_id"].tolist() == ["scene.png#2"]
    assert result.problems["stage"].tolist() == ["coco"]
    assert "lies outside the 100x80 image" in result.problems["reason"].iloc[0]


def test_padding_past_the_edge_is_clipped_without_a_note(tmp_path):
    folder, coco = coco_scene(tmp_path, [[5, 5, 20, 20]])
    result = scan(folder, coco=coco, padding=0.5)
    assert box_of(result.samples, "scene.png#1") == (0, 0, 35, 35)
    assert result.problems.empty
