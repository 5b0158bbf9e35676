import pytest

from semid.model.config import SemidConfig


def test_defaults_are_valid_and_round_trip():
    cfg = SemidConfig().validate()
    assert SemidConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"model": {"levels": 0}}, "levels"),
        ({"model": {"tokenizer": "vq"}}, "tokenizer"),
        ({"train": {"lr": 3}}, "lr"),
        ({"train": {"epochs": "ten"}}, "epochs"),
        ({"train": {"ema": 1}}, "ema"),
        ({"train": {"nonsense": 1}}, "nonsense"),
        ({"extra": {}}, "extra"),
    ],
)
def test_invalid_values_name_the_field(data, field):
    with pytest.raises(ValueError, match=field):
        SemidConfig.from_dict(data)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        SemidConfig.from_file(bad)
    with pytest.raises(FileNotFoundError):
        SemidConfig.from_file(tmp_path / "missing.json")
