"""Typed index settings: defaults, validation, mlfix.toml round trips, weights parsing, cache keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlfix.errors import MlfixError, NotAProjectError, SettingsError
from mlfix.settings import CONFIG_NAME, IndexSettings, Weights, read_config, write_config

settings_values = st.fixed_dictionaries({}, optional={
    "backbone": st.sampled_from(["resnet18", "efficientnet_lite0", "efficientnet_lite0+efficientnet_lite2"]),
    "weights": st.sampled_from(["auto", "random", "imagenet", "offline", "trained", "models/last.pt",
                                "/abs/w.pth", "file:weights"]),
    "image_size": st.one_of(st.integers(16, 4096), st.just("auto")),
    "tta_flip": st.booleans(),
    "cell_stride": st.sampled_from([8, 16, 32]),
    "words": st.integers(2, 65536),
    "kmeans_iterations": st.integers(1, 10_000),
    "seed": st.integers(0, 2**32 - 1),
    "batch_size": st.integers(1, 65536),
    "cell_cache_gb": st.floats(0, 1e6, allow_nan=False),
    "exact_order_max": st.integers(0, 10**9),
    "engine": st.sampled_from(["local", "ray"]),
    "ray_address": st.sampled_from([None, "", "auto", "10.0.0.1:6379", "ray://head.example:10001", "[::1]:6379"]),
})


@given(settings_values)
def test_settings_survive_a_round_trip_through_mlfix_toml(tmp_path_factory, values):
    folder = tmp_path_factory.mktemp("p")
    settings = IndexSettings.from_dict(values)
    write_config(folder, {"images": "/data/photos", "labels": None}, settings)
    source, again = read_config(folder)
    assert again == settings
    assert source == {"images": "/data/photos"}  # None values are left out of the file


@given(st.sampled_from(["auto", "random", "imagenet", "offline", "trained", "models/last.pt", "w.pt",
                        "~/w.safetensors", "file:w", "/abs/path/model.pth"]))
def test_weights_parse_back_from_their_stored_form(text):
    weights = Weights.parse(text)
    assert Weights.parse(str(weights)) == weights


def test_defaults_live_in_one_place_and_are_typed():
    settings = IndexSettings()
    assert settings.weights == Weights("auto") and settings.image_size == "auto" and settings.words == 1024
    assert settings.backbone == "efficientnet_lite0"  # the best measured offline backbone (bench/defaults.py)
    assert settings.to_dict()["weights"] == "auto" and settings.to_dict()["image_size"] == "auto"


@pytest.mark.parametrize("name, value, message", [
    ("words", 1, "words must be an integer from 2 to 65536"),
    ("words", 70000, "words must be an integer"),
    ("image_size", "224", "image_size must be 'auto' .* or an integer from 16 to 4096"),
    ("image_size", "big", "image_size must be 'auto'"),
    ("image_size", True, "image_size must be 'auto'"),
    ("image_size", 12.5, "image_size must be 'auto'"),
    ("image_size", 8, "image_size must be 'auto'"),
    ("tta_flip", "yes", "tta_flip must be true or false"),
    ("cell_stride", 12, "cell_stride must be 8, 16 or 32"),
    ("backbone", "", "backbone must be a timm model name"),
    ("backbone", "resnet18+", "backbone must be a timm model name"),
    ("cell_cache_gb", -1, "cell_cache_gb must be a number"),
    ("weights", "imagnet", "unknown weights 'imagnet'"),
    ("weights", "file:", "needs a path"),
    ("engine", "spark", "engine must be one of local, ray, got 'spark'"),
    ("engine", None, "engine must be one of local, ray"),
    ("ray_address", "--engine=local", "ray_address must be 'auto', HOST:PORT"),
    ("ray_address", "auto; rm -rf ~", "ray_address must be"),
    ("ray_address", "host:6379\n--engine", "ray_address must be"),
    ("ray_address", 6379, "ray_address must be"),
])
def test_bad_values_are_refused_with_the_setting_named(name, value, message):
    with pytest.raises(SettingsError, match=message):
        IndexSettings(**{name: value})


def test_a_settings_error_is_a_value_error_and_an_mlfix_error():
    with pytest.raises(ValueError):
        IndexSettings(words=0)
    assert issubclass(SettingsError, MlfixError)


def test_unknown_and_unchanged_settings():
    with pytest.raises(SettingsError, match="unknown settings"):
        IndexSettings().replace(wrods=3)
    assert IndexSettings(words=64).replace(words=None).words == 64  # None keeps the value
    assert IndexSettings(image_size=32).replace(image_size=64.0).image_size == 64  # an integral float is an int


def test_a_keyword_means_the_keyword_and_a_file_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "offline").write_bytes(b"")
    assert Weights.parse("offline") == Weights("offline")  # even with a file of that name here
    assert Weights.parse("file:offline") == Weights("file", tmp_path / "offline")
    assert Weights.parse("./offline") == Weights("file", tmp_path / "offline")
    assert Weights.parse("models/w.pt").path == tmp_path / "models" / "w.pt"  # read later from anywhere
    with pytest.raises(SettingsError, match="unknown weights 'model'.*file:model"):
        Weights.parse("model")


def test_cache_keys_change_exactly_with_the_settings_they_depend_on():
    with pytest.raises(SettingsError, match="image_size 'auto' must be resolved"):
        IndexSettings().feature_key("digest", "resnet18", "random")
    base = IndexSettings(image_size=224)
    assert base.replace(image_size=128).feature_key("digest", "a", "w")["image_size"] == 128
    features = base.feature_key("digest", "resnet18", "random")
    assert "tta_flip" not in features  # projects indexed before the setting keep their features
    assert base.replace(tta_flip=True).feature_key("digest", "resnet18", "random")["tta_flip"] is True
    assert base.replace(words=64).feature_key("digest", "resnet18", "random") == features
    assert base.replace(words=64).words_key(features) != base.words_key(features)
    assert base.replace(exact_order_max=10).words_key(features) == base.words_key(features)
    assert base.replace(exact_order_max=10).order_key(base.words_key(features), "l") != \
        base.order_key(base.words_key(features), "l")


def test_a_damaged_config_says_which_file_and_setting(tmp_path):
    with pytest.raises(NotAProjectError, match="no mlfix.toml"):
        read_config(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("[index]\nwords = 'many'\n")
    with pytest.raises(SettingsError, match=r"words must be an integer.*fix it in .*mlfix.toml"):
        read_config(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("[index\n")
    with pytest.raises(NotAProjectError, match="not a valid mlfix.toml"):
        read_config(tmp_path)


@pytest.mark.parametrize("text, message", [
    ('[source]\nlabls = "x.csv"\n', r"unknown \[source\] key\(s\) \['labls'\]"),
    ('[indx]\nwords = 3\n', r"unknown table\(s\) \['indx'\]"),
    ('[source]\npadding = "lots"\n', r"\[source\] padding must be a fraction"),
    ('[source]\nimages = 3\n', r"\[source\] images must be a path"),
])
def test_hand_edits_outside_index_are_checked_too(tmp_path, text, message):
    (tmp_path / CONFIG_NAME).write_text(text)
    with pytest.raises(SettingsError, match=message):
        read_config(tmp_path)


# ---- the engine: where the features are extracted, never part of what they are ------------------

def test_the_engine_is_local_with_no_address_unless_asked():
    settings = IndexSettings()
    assert (settings.engine, settings.ray_address) == ("local", None)
    assert settings.to_dict()["engine"] == "local" and settings.to_dict()["ray_address"] == ""  # TOML has no null
    ray = settings.replace(engine=" ray ", ray_address=" auto ")
    assert (ray.engine, ray.ray_address) == ("ray", "auto")
    assert ray.replace(ray_address="").ray_address is None  # "" clears the address: a local Ray
    assert ray.replace(ray_address=None).ray_address == "auto"  # None keeps it, like every setting


def test_the_engine_and_address_are_written_to_and_read_from_the_index_table(tmp_path):
    import tomllib

    write_config(tmp_path, {"images": "/data"}, IndexSettings(engine="ray", ray_address="ray://head:10001"))
    table = tomllib.loads((tmp_path / CONFIG_NAME).read_text())["index"]
    assert (table["engine"], table["ray_address"]) == ("ray", "ray://head:10001")
    assert read_config(tmp_path)[1] == IndexSettings(engine="ray", ray_address="ray://head:10001")
    (tmp_path / CONFIG_NAME).write_text('[index]\nengine = "dask"\n')
    with pytest.raises(SettingsError, match=r"engine must be one of local, ray.*fix it in .*mlfix.toml"):
        read_config(tmp_path)


@given(st.sampled_from([None, "auto", "h:6379"]), st.booleans())
def test_no_cache_key_depends_on_the_engine(address, flip):
    local = IndexSettings(image_size=64, tta_flip=flip)
    ray = local.replace(engine="ray", ray_address=address)
    features = local.feature_key("digest", "resnet18", "random")
    assert ray.feature_key("digest", "resnet18", "random") == features
    assert ray.words_key(features) == local.words_key(features)
    assert ray.order_key(local.words_key(features), "l") == local.order_key(local.words_key(features), "l")
    assert not {"engine", "ray_address"} & set(local.order_key(local.words_key(features), "l"))
