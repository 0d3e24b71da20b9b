"""Binding scenes: seeded, balanced, with the distractor and held-out cases they claim, checked from the objects."""

import numpy as np
import pytest
import torch

from crossfuse.data.scenes import (
    COLOR_RGB,
    HELD_OUT,
    SHAPES,
    VOCAB,
    SceneConfig,
    binding_splits,
    generate_binding,
    question_category,
    shape_cells,
    shape_mask,
)


def _present(objects, color, shape):
    return any(o.color == color and o.shape == shape for o in objects)


def _distractors(objects, color, shape):
    """Recomputed here on purpose (not the library's helper): colour elsewhere AND shape elsewhere."""
    colors_elsewhere = {o.shape for o in objects if o.color == color} - {shape}
    shapes_elsewhere = {o.color for o in objects if o.shape == shape} - {color}
    return bool(colors_elsewhere) and bool(shapes_elsewhere)


@pytest.fixture(scope="module")
def splits():
    return binding_splits(600, 400, seed=11)


def test_same_seed_same_scenes_other_seed_differs() -> None:
    a, b, c = generate_binding(40, seed=5), generate_binding(40, seed=5), generate_binding(40, seed=6)
    torch.testing.assert_close(a.images, b.images)
    assert a.objects == b.objects and a.questions == b.questions
    assert torch.equal(a.answers, b.answers)
    assert not torch.equal(a.images, c.images)


def test_answers_match_objects_and_are_balanced(splits) -> None:
    for data in splits:
        truth = [_present(objs, *q) for objs, q in zip(data.objects, data.questions, strict=True)]
        assert data.answers.tolist() == [int(t) for t in truth]
        assert 0.42 < data.answers.float().mean().item() < 0.58


def test_distractor_cases_are_there_and_balanced(splits) -> None:
    for data in splits:
        hard = [
            (_distractors(objs, *q), _present(objs, *q)) for objs, q in zip(data.objects, data.questions, strict=True)
        ]
        no = sum(d and not p for d, p in hard)
        yes = sum(d and p for d, p in hard)
        # the generator aims at a quarter each; allow sampling noise, but both must be plentiful
        assert no > 0.18 * len(data) and yes > 0.18 * len(data)
        assert abs(no - yes) < 0.1 * len(data)
        # the library's own category agrees with the independent recount
        for (objs, q), (d, p) in zip(zip(data.objects, data.questions, strict=True), hard, strict=True):
            expected = {(True, True): "yes_distractors", (False, True): "yes", (True, False): "distractor"}
            assert question_category(objs, *q) == expected.get((d, p), "absent")


def test_held_out_pairs_never_asked_in_training_and_asked_in_test(splits) -> None:
    train, test = splits
    assert not set(train.questions) & set(HELD_OUT)
    held = [q in HELD_OUT for q in test.questions]
    assert sum(held) == 200
    assert {q for q in test.questions if q in HELD_OUT} == set(HELD_OUT)
    # held-out questions include binding distractors (the hard case of the hard split)
    assert any(h and _distractors(objs, *q) for h, objs, q in zip(held, test.objects, test.questions, strict=True))
    # every colour and every shape is still asked about in training
    assert {c for c, _ in train.questions} == {c for c, _ in HELD_OUT}
    assert {s for _, s in train.questions} == set(SHAPES)


def test_objects_fit_keep_their_gap_and_are_drawn_in_their_colour() -> None:
    config = SceneConfig(noise=0.0, brightness=(1.0, 1.0))
    data = generate_binding(60, seed=2, config=config)
    for image, objects in zip(data.images, data.objects, strict=True):
        assert config.min_objects <= len(objects) <= config.max_objects
        drawn = (image.abs().sum(0) > 0).float()
        assert drawn.sum() == sum(shape_mask(o.shape, o.size, o.variant).sum() for o in objects)
        for i, o in enumerate(objects):
            x0, y0, x1, y1 = o.xyxy
            assert min(x0, y0) >= 0 and max(x1, y1) <= 24 and x0 % 4 == 0 and y0 % 4 == 0
            for other in objects[:i]:
                ox0, oy0, ox1, oy1 = other.xyxy
                g = config.gap
                assert x1 + g <= ox0 or ox1 + g <= x0 or y1 + g <= oy0 or oy1 + g <= y0
            stencil = torch.from_numpy(shape_mask(o.shape, o.size, o.variant))
            region = image[:, y0:y1, x0:x1]
            torch.testing.assert_close(region[:, stencil].mean(1), torch.tensor(COLOR_RGB[o.color]))
            assert region[:, ~stencil].abs().max() == 0


def test_patches_and_tokens_match_a_direct_reading() -> None:
    data = generate_binding(3, seed=0)
    patches = data.patches(4)
    assert patches.shape == (3, 36, 48)
    # patch (row 1, col 2) of image 2, channel-last within the patch
    expected = data.images[2, :, 4:8, 8:12].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(patches[2, 1 * 6 + 2], expected)
    tokens, mask = data.tokens()
    assert mask.all()
    words = [[VOCAB[i] for i in row] for row in tokens.argmax(-1).tolist()]
    assert words == [["is", "there", "a", c, s] for c, s in data.questions]


def test_shapes_fill_two_cells_and_differ_only_in_their_relation() -> None:
    stencils = {(s, v): shape_mask(s, 8, v) for s in SHAPES for v in (0, 1)}
    for (shape, variant), mask in stencils.items():
        cells = shape_cells(shape, variant)
        assert len(set(cells)) == 2 and mask.sum() == 2 * 16
        for r, c in cells:  # every filled cell is a whole 4x4 block
            assert mask[r * 4 : r * 4 + 4, c * 4 : c * 4 + 4].all()
    assert len({m.tobytes() for m in stencils.values()}) == 6  # 2 bars, 2 columns, 2 diagonals
    # over their variants a bar and a column fill every cell equally often
    for shape in ("bar", "column"):
        assert len(np.unique(sum(shape_mask(shape, 8, v).astype(int) for v in (0, 1)))) == 1


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match="color"):
        generate_binding(4, seed=0, targets=[("pink", "square")])
    with pytest.raises(ValueError, match="min_objects"):
        SceneConfig(min_objects=1)
    with pytest.raises(ValueError, match="patch"):
        generate_binding(2, seed=0).patches(5)
    with pytest.raises(ValueError, match="object_size"):
        SceneConfig(object_size=7)
    with pytest.raises(ValueError, match="variant"):
        shape_cells("bar", 2)
    with pytest.raises(ValueError, match="n_test"):
        binding_splits(4, 0, seed=0)
    with pytest.raises(ValueError, match="held_out_fraction"):
        binding_splits(4, 4, seed=0, held_out_fraction=1.5)


def test_an_all_held_out_test_split() -> None:
    _, test = binding_splits(4, 6, seed=0, held_out_fraction=1.0)
    assert len(test) == 6 and all(q in HELD_OUT for q in test.questions)
