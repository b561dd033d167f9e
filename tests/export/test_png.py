"""PNG export: 8- and 16-bit grey levels from [-1, 1], synthetic text chunks, 2D only."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsynth.cli import main
from medsynth.export.png import encode_png, to_grey
from medsynth.sampling import read_sample
from tests.export.conftest import export


@pytest.mark.parametrize("bits, mode, top", [(8, "L", 255), (16, "I;16", 65535)])
def test_png_bits_and_values(run2d, tmp_path, bits, mode, top):
    out = export(run2d, "png", tmp_path / "out", "--bits", bits, n=2)
    for i in range(2):
        with Image.open(out / f"sample_0_00000{i}.png") as im:
            assert im.mode == mode
            assert "SYNTHETIC" in im.text["Description"] and "medsynth" in im.text["Software"]
            arr = np.asarray(im)
        src = read_sample(out / "samples" / f"sample_0_00000{i}.png")
        np.testing.assert_array_equal(arr, np.round((src + 1) * top / 2).astype(arr.dtype))


def test_grey_mapping_endpoints():
    x = np.array([[-1.0, 0.0, 1.0]], np.float32)
    assert to_grey(x, 8).tolist() == [[0, 128, 255]]
    assert to_grey(x, 16).tolist() == [[0, 32768, 65535]]
    with pytest.raises(ValueError, match="8 or 16"):
        to_grey(x, 12)
    with pytest.raises(ValueError, match="2D"):
        encode_png(np.zeros((2, 2, 2)), 8, model_name="m", checkpoint_sha256="0", seed=0)


def test_png_of_a_3d_run_and_bits_with_dicom_are_refused(run3d, run2d, tmp_path, capsys):
    assert main(["export", str(run3d), "--format", "png", "-n", "1", "--skip-privacy-check",
                 "--out", str(tmp_path / "a")]) == 2
    assert "PNG export is for 2D images" in capsys.readouterr().err
    assert main(["export", str(run2d), "--format", "dicom", "--bits", "8", "-n", "1", "--skip-privacy-check",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--bits applies to --format png only" in capsys.readouterr().err
