from pathlib import Path

import pytest
import yaml

from medsynth.config import Config, ConfigError, config_from_dict, describe_keys, dump_config, resolve_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_every_shipped_config_resolves_and_its_model_builds():
    from medsynth.models import build_model

    for p in sorted((REPO / "configs").glob("*.yaml")):
        cfg = resolve_config(p)
        assert cfg.data.path, p
        model = build_model(cfg.model, (1, *cfg.data.image_size), 2 if cfg.model.conditional else 0)
        assert model.generator.latent_dim == cfg.model.latent_dim, p


def test_defaults_file_and_overrides_merge(tmp_path):
    p = write(tmp_path, "data: {path: /x, image_size: [32, 32]}\ntrain: {batch_size: 8}\n")
    cfg = resolve_config(p, ["train.batch_size=64", "data.labels=[CXR, MRBrain]", "train.lr_g=1e-3",
                             "data.intensity.mode=window", "data.intensity.window=[0,255]"])
    assert cfg.train.batch_size == 64                       # override beats file
    assert cfg.data.image_size == [32, 32]                  # file beats default
    assert cfg.train.steps == Config().train.steps          # default kept
    assert cfg.data.labels == ["CXR", "MRBrain"]
    assert cfg.train.lr_g == pytest.approx(1e-3) and isinstance(cfg.train.lr_g, float)
    assert cfg.data.intensity.window == [0.0, 255.0]


def test_int_accepted_where_float_expected(tmp_path):
    cfg = resolve_config(write(tmp_path, "data: {path: /x, holdout_fraction: 0}\n"))
    assert cfg.data.holdout_fraction == 0.0 and isinstance(cfg.data.holdout_fraction, float)


@pytest.mark.parametrize("text, overrides, expect", [
    ("data: {path: /x, imge_size: [64, 64]}", [], r"c\.yaml: unknown key 'data\.imge_size' \(did you mean 'data\.image_size'\?\)"),
    ("data: {path: /x}\ntrian: {}", [], r"c\.yaml: unknown key 'trian' \(did you mean 'train'\?\)"),
    ("data: {path: /x}\ntrain: {batch_size: big}", [], r"c\.yaml: train\.batch_size: expected an integer, got 'big'"),
    ("data: {path: /x}\ntrain: {batch_size: 1.5}", [], r"train\.batch_size: expected an integer"),
    ("data: {path: /x}\ntrain: {batch_size: true}", [], r"train\.batch_size: expected an integer"),
    ("data: {path: /x, cache: 1}", [], r"data\.cache: expected true or false"),
    ("data: {image_size: [64, 64]}", [], r"c\.yaml: missing required value 'data\.path'"),
    ("data: {path: /x, mode: 4d}", [], r"data\.mode: must be one of 2d, 3d; got '4d'"),
    ("data: {path: /x, image_size: [64, 64, 64]}", [], r"data\.image_size: 2d mode needs 2 sizes"),
    ("data: {path: /x, holdout_fraction: 0.95}", [], r"data\.holdout_fraction: must be at most 0\.9"),
    ("data: {path: /x, slice_range: [0.8, 0.2]}", [], r"data\.slice_range: expected \[start, end\]"),
    ("data: {path: /x, intensity: {mode: window}}", [], r"data\.intensity\.window: window mode needs"),
    ("data: {path: /x, patient_pattern: 'IXI'}", [], r"data\.patient_pattern: needs one capturing group"),
    ("data: {path: /x, patient_pattern: '(IXI'}", [], r"data\.patient_pattern: not a valid regular expression"),
    ("data: [1, 2]", [], r"c\.yaml: data: expected a mapping of keys"),
    ("- a\n- b", [], r"c\.yaml: the top level must be a mapping"),
    ("data: {path: /x", [], r"c\.yaml: not valid YAML"),
    ("data: {path: /x}", ["model.augment=[translation, flip]"],
     r"command line: model\.augment: unknown augmentation 'flip'; choose from translation, cutout, intensity"),
    ("data: {path: /x}", ["model.ada_target=1.5"], r"command line: model\.ada_target: must be at most 1"),
    ("data: {path: /x}", ["model.augment_p=-0.1"], r"command line: model\.augment_p: must be at least 0"),
    ("data: {path: /x}", ["train.batch_sise=3"], r"command line: unknown key 'train\.batch_sise' \(did you mean 'train\.batch_size'\?\)"),
    ("data: {path: /x}", ["train.batch_size=abc"], r"command line: train\.batch_size: expected an integer, got 'abc'"),
    ("data: {path: /x}", ["train.batch_size"], r"command line: override 'train\.batch_size' must look like key=value"),
])
def test_errors_name_the_key_and_the_source(tmp_path, text, overrides, expect):
    with pytest.raises(ConfigError, match=expect):
        resolve_config(write(tmp_path, text), overrides)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(tmp_path / "nope.yaml")


def test_resolved_config_is_written_in_full_and_round_trips(tmp_path):
    cfg = resolve_config(write(tmp_path, "data: {path: /x}\n"), ["seed=7"])
    text = dump_config(cfg)
    raw = yaml.safe_load(text)
    # every key of the schema appears, defaults included
    for key, *_ in describe_keys():
        node = raw
        for part in key.split("."):
            assert part in node, key
            node = node[part]
    assert config_from_dict(raw) == cfg
    assert raw["seed"] == 7


def test_describe_keys_has_help_for_every_key():
    rows = describe_keys()
    assert len(rows) > 30
    assert all(help_text for _, _, _, help_text in rows), [k for k, _, _, h in rows if not h]


def test_configuration_doc_is_in_sync_with_the_code():
    from medsynth.config import reference_markdown

    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == reference_markdown(), "regenerate: python -m medsynth.config > docs/configuration.md"
