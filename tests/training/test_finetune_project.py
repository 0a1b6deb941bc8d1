"""Which network a project fine-tunes and the weights it starts from (mlfix.training.finetune_project)."""

from __future__ import annotations

import pytest

from mlfix.errors import SettingsError
from mlfix.settings import IndexSettings, Weights
from mlfix.training import finetune_project as module
from mlfix.training.finetune_project import finetune_weights, finetuned_backbone

ENSEMBLE = "efficientnet_lite0+efficientnet_lite2"


def test_the_index_backbone_or_an_ensembles_first_member_is_fine_tuned_unless_told():
    assert finetuned_backbone(IndexSettings()) == "efficientnet_lite0"
    assert finetuned_backbone(IndexSettings(backbone=ENSEMBLE)) == "efficientnet_lite0"
    assert finetuned_backbone(IndexSettings(backbone=ENSEMBLE), " efficientnet_lite1 ") == "efficientnet_lite1"


@pytest.mark.parametrize("backbone, message", [(ENSEMBLE, "trains one network"), ("", "trains one network"),
                                               ("resnet1800", "unknown backbone 'resnet1800'")])
def test_a_backbone_that_is_not_one_known_network_is_refused_with_a_message(backbone, message):
    with pytest.raises(SettingsError, match=message):
        finetuned_backbone(IndexSettings(), backbone)


def test_another_network_starts_from_its_own_weights_not_the_index_checkpoint(tmp_path):
    checkpoint = tmp_path / "index.pt"
    checkpoint.write_bytes(b"a checkpoint for the ensemble")
    settings = IndexSettings(backbone=ENSEMBLE, weights=Weights.parse(str(checkpoint)))
    assert finetune_weights(settings, tmp_path, ENSEMBLE).weights == str(checkpoint.resolve())  # the index's own
    member = finetune_weights(settings, tmp_path, "efficientnet_lite0")  # a file fits one network: auto here
    assert member.weights == "offline" and "offline ImageNet weights" in member.text
    assert finetune_weights(IndexSettings(weights=Weights("random")), tmp_path, "efficientnet_lite1").weights == "random"


@pytest.mark.parametrize("weights", ["auto", "offline", "trained"])
def test_another_network_without_weights_here_is_refused_before_any_work(tmp_path, weights):
    with pytest.raises(SettingsError, match="efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"):
        finetune_weights(IndexSettings(weights=Weights(weights)), tmp_path, "resnet50")


def test_the_backbone_option_picks_the_network_and_its_weights(monkeypatch, tmp_path):
    import numpy as np
    import pandas as pd

    seen = {}

    def fake_finetune(root, samples, labels, factory, folder, settings, **kw):
        seen.update(kw, factory=factory, settings=settings)

    monkeypatch.setattr(module, "finetune", fake_finetune)
    samples = pd.DataFrame({"sample_id": ["a", "b"], "path": ["a.png", "b.png"]})
    module.finetune_project(tmp_path, IndexSettings(), None, samples, ["x", "y"], np.zeros(2, bool), 64,
                            options={"backbone": "efficientnet_lite1", "folds": 2, "epochs": None})
    assert seen["cache_key"] == {"backbone": "efficientnet_lite1", "weights": "offline"}
    assert seen["settings"].folds == 2 and seen["settings"].image_size == 64
    network = seen["factory"]()
    assert (network.name, network.weights) == ("efficientnet_lite1", "offline")


def test_the_best_presets_network_applies_to_projects_on_the_shipped_weights_only(tmp_path):
    from mlfix.training.finetune_project import preset_options

    shipped = IndexSettings()  # Lite0 from the offline ImageNet weights
    assert preset_options(shipped, tmp_path, "best")["backbone"] == "efficientnet_lite1"
    assert "backbone" not in preset_options(shipped, tmp_path, "default")
    assert preset_options(shipped, tmp_path, "best", backbone="efficientnet_lite2", folds=None) == {
        "backbone": "efficientnet_lite2"}  # explicit options win, None ones are not given
    own = IndexSettings(backbone="resnet18", weights=Weights("random"))  # the user's own network
    assert "backbone" not in preset_options(own, tmp_path, "best")
    assert preset_options(own, tmp_path, "best", backbone="efficientnet_lite1")["backbone"] == "efficientnet_lite1"
    missing = IndexSettings(weights=Weights("trained"))  # no checkpoint yet: the index's error comes later
    assert "backbone" not in preset_options(missing, tmp_path, "best")


@pytest.mark.parametrize("options, says_first_member", [({}, True), ({"backbone": "efficientnet_lite0"}, False)])
def test_an_ensemble_index_says_it_fine_tunes_its_first_member_unless_the_network_was_chosen(
        monkeypatch, tmp_path, options, says_first_member):
    import numpy as np
    import pandas as pd

    notes = []

    class Notes:
        def note(self, text):
            notes.append(text)

    monkeypatch.setattr(module, "finetune", lambda *a, **kw: None)
    samples = pd.DataFrame({"sample_id": ["a", "b"], "path": ["a.png", "b.png"]})
    module.finetune_project(tmp_path, IndexSettings(backbone=ENSEMBLE), None, samples, ["x", "y"], np.zeros(2, bool),
                            64, progress=Notes(), options=options)
    assert any("first member, efficientnet_lite0" in n for n in notes) == says_first_member
    assert any(n.startswith("fine-tuning efficientnet_lite0 from") for n in notes)


@pytest.mark.parametrize("trained_flip, options, expected", [(False, {}, False), (True, {}, True),
                                                             (False, {"flip": True}, True)])
def test_a_checkpoint_trained_without_mirror_images_fine_tunes_without_them_unless_told(
        monkeypatch, tmp_path, trained_flip, options, expected):
    import json

    import numpy as np
    import pandas as pd

    models = tmp_path / "models"
    models.mkdir()
    (models / "last.pt").write_bytes(b"weights")
    (models / "last.json").write_text(json.dumps({"settings": {"backbone": "efficientnet_lite0",
                                                               "flip": trained_flip}}))
    seen, notes = {}, []

    class Notes:
        def note(self, text):
            notes.append(text)

    monkeypatch.setattr(module, "finetune", lambda *a, **kw: seen.update(settings=a[5], key=kw["cache_key"]))
    samples = pd.DataFrame({"sample_id": ["a", "b"], "path": ["a.png", "b.png"]})
    module.finetune_project(tmp_path, IndexSettings(), None, samples, ["x", "y"], np.zeros(2, bool), 64,
                            progress=Notes(), options=options)
    assert seen["key"]["weights"]["file"] == str((models / "last.pt").resolve())  # it starts from the checkpoint
    assert seen["settings"].flip is expected
    assert any("without mirror images" in n for n in notes) == (not trained_flip and not options)
