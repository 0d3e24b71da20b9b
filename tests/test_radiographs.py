"""The chest-film generator: determinism, boxes where the pixels changed, reports, vocabulary, files."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from crossfuse.data.radiographs import (
    KINDS,
    SPECIALS,
    VARIANT_KINDS,
    RadiographDataset,
    Vocabulary,
    detokenize,
    generate_studies,
    generate_study,
    load_png,
    max_report_length,
    render,
    sample_anatomy,
    sample_finding,
    save_png,
    tokenize,
    without,
)
from crossfuse.lab.grounding import parse_findings

STUDIES = generate_studies(120, seed=7)  # standard variant
HARD = generate_studies(120, seed=7, variant="hard")


def test_same_seed_same_study_and_streams_are_independent() -> None:
    a, b = generate_study(3, 11), generate_study(3, 11)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.report == b.report and a.findings == b.findings
    # study i does not depend on how many studies are drawn before it
    np.testing.assert_array_equal(generate_studies(3, seed=3, start=10)[1].image, a.image)
    assert not np.array_equal(generate_study(3, 12).image, a.image)


def test_images_are_films_in_range() -> None:
    for study in STUDIES[:20]:
        assert study.image.shape == (64, 64) and study.image.dtype == np.float32
        assert study.image.min() >= 0.0 and study.image.max() <= 1.0
        lung_side = study.image[20:40, 14:22].mean()  # inside the right lung field
        body_edge = study.image[56:60, 28:36].mean()  # soft tissue below the lungs
        assert lung_side < body_edge  # lungs are darker than soft tissue


def test_every_kind_and_normal_studies_occur() -> None:
    assert (
        {f.kind for s in STUDIES for f in s.findings} == set(VARIANT_KINDS["standard"]) == set(KINDS) - {"rib fracture"}
    )
    assert {f.kind for s in HARD for f in s.findings} == set(VARIANT_KINDS["hard"]) == set(KINDS)
    assert any(not s.findings for s in STUDIES)
    with pytest.raises(ValueError, match="variant"):
        generate_studies(2, seed=0, variant="easy")


def test_standard_findings_are_larger_than_hard_ones() -> None:
    rng = np.random.default_rng(0)
    anatomy = sample_anatomy(rng)
    for kind in ("opacity", "nodule"):
        std = [sample_finding(rng, anatomy, kind, "right lower", "standard").params[2] for _ in range(50)]
        hard = [sample_finding(rng, anatomy, kind, "right lower", "hard").params[2] for _ in range(50)]
        assert min(std) > max(hard)
    std_nodule = [sample_finding(rng, anatomy, "nodule", "left upper").params[2:] for _ in range(50)]
    assert min(r for r, _ in std_nodule) >= 3.0 and min(a for _, a in std_nodule) >= 0.5


@pytest.mark.parametrize("studies", [STUDIES, HARD], ids=["standard", "hard"])
def test_boxes_lie_where_the_pixels_changed(studies) -> None:
    checked = set()
    for study in studies:
        for finding in study.findings:
            diff = np.abs(study.image - without(study, finding))
            x0, y0, x1, y1 = finding.xyxy
            inside = np.zeros_like(diff, dtype=bool)
            inside[y0:y1, x0:x1] = True
            assert diff[~inside].max() == 0.0, f"{finding.label} changed pixels outside its box"
            assert diff[inside].max() > 0.1, f"{finding.label} is invisible"
            # the box is tight: the changed pixels span most of it in both directions
            ys, xs = np.nonzero(diff > 1e-6)
            assert (xs.max() + 1 - xs.min()) >= 0.5 * (x1 - x0) and (ys.max() + 1 - ys.min()) >= 0.5 * (y1 - y0)
            checked.add(finding.kind)
    assert checked == {f.kind for s in studies for f in s.findings}


@pytest.mark.parametrize("variant", ["standard", "hard"])
def test_locations_follow_anatomy(variant: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        anatomy = sample_anatomy(rng)
        for kind in ("opacity", "nodule", "rib fracture"):
            for location in ("right upper", "left lower", "left middle"):
                finding = sample_finding(rng, anatomy, kind, location, variant)
                x0, y0, x1, y1 = finding.xyxy
                side, zone = location.split()
                # radiographic convention: the patient's right is on the image's left
                assert ((x0 + x1) / 2 < 32) == (side == "right")
                top, bottom = anatomy.zone_rows(side, zone)
                assert top - 1 <= (y0 + y1) / 2 <= bottom + 1


def test_render_without_findings_is_the_normal_film() -> None:
    study = next(s for s in STUDIES if len(s.findings) == 2)
    normal = render(study.anatomy, [])
    assert not np.array_equal(normal, study.image)
    np.testing.assert_array_equal(normal, render(study.anatomy, []))


def test_reports_state_exactly_the_findings() -> None:
    for study in STUDIES + HARD:
        assert parse_findings(study.report) == study.finding_set, study.report
        if not study.findings:
            assert "no pleural effusion" in study.report.lower() or "no effusion" in study.report.lower()


def test_vocabulary_round_trip_and_specials() -> None:
    vocab = Vocabulary.build([s.report for s in STUDIES])
    assert tuple(vocab.tokens[:4]) == SPECIALS and (vocab.pad_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2)
    for study in STUDIES[:30]:
        ids = vocab.encode(study.report, max_len=50)
        assert ids[0] == vocab.bos_id and len(ids) == 50
        assert ids[len(tokenize(study.report)) + 1] == vocab.eos_id
        assert vocab.decode(ids) == study.report == detokenize(tokenize(study.report))
    assert vocab.encode("zebra")[1] == vocab.unk_id
    with pytest.raises(ValueError, match="max_len"):
        vocab.encode(STUDIES[0].report, max_len=3)
    with pytest.raises(ValueError, match="tokens"):
        Vocabulary(["a", "b"])


def test_dataset_batches_collate() -> None:
    vocab = Vocabulary.build([s.report for s in STUDIES])
    data = RadiographDataset(STUDIES[:10], vocab, max_report_length(STUDIES))
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["tokens"].shape == (4, max_report_length(STUDIES))
    assert batch["tokens"].dtype == torch.long
    assert torch.equal(batch["image"][2, 0], torch.from_numpy(STUDIES[2].image))


def test_png_round_trip_and_bad_files(tmp_path) -> None:
    image = STUDIES[0].image
    path = save_png(image, tmp_path / "film.png")
    np.testing.assert_allclose(load_png(path, 64), image, atol=1 / 255)
    with pytest.raises(ValueError, match="expected a 32x32 image, got 64x64"):
        load_png(path, 32)
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        load_png(tmp_path / "junk.png", 64)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_png(tmp_path / "missing.png", 64)


def test_load_png_checks_the_size_from_the_header_before_decoding(tmp_path) -> None:
    """A small file that claims 9000x9000 pixels (its pixel data cut short) is refused by its header's size:
    decoding it first would need ~81 MB per channel and then fail on the truncated data instead."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 9001)  # one row of 9000
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    assert path.stat().st_size < 1000
    with pytest.raises(ValueError, match=r"image: expected a 64x64 image, got 9000x9000"):
        load_png(path, 64)
