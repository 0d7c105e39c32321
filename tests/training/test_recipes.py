"""Recipes: the registry, overrides, `--set` parsing and their one-line errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from training.recipes import RECIPES, Recipe, RecipeError, default_recipe, get_recipe

REQUIRED = {
    "demo_fastnet",
    "cifar10_fastnet",
    "cifar10_resnet_small",
    "cifar10_resnet18",
    "fer2013_resnet_small",
    "fer2013_vgg19",
    "butterfly_resnet_small",
    "butterfly_resnet50",
}


def test_registry_has_every_required_recipe_keyed_by_name() -> None:
    assert set(RECIPES) >= REQUIRED
    for name, recipe in RECIPES.items():
        assert recipe.name == name


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_models_and_datasets_exist(name: str) -> None:
    from models import list_models
    from training.datasets import dataset_names

    recipe = RECIPES[name]
    assert recipe.model in list_models()
    assert recipe.dataset in dataset_names()
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_every_field_is_documented() -> None:
    import inspect

    source = inspect.getsource(Recipe)
    for field in dataclasses.fields(Recipe):
        # Each field is followed by its docstring line.
        after = source.split(f"    {field.name}:", 1)[1].split("\n", 2)[1]
        assert after.strip().startswith('"""'), field.name


def test_override_changes_only_named_fields() -> None:
    base = get_recipe("cifar10_fastnet")
    changed = base.override(epochs=3, lr=0.5, flip=False)
    assert (changed.epochs, changed.lr, changed.flip) == (3, 0.5, False)
    assert changed.batch_size == base.batch_size
    assert base.epochs != 3  # frozen original untouched
    assert base.override(lr=1).lr == 1  # an int is a fine float


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epoch": 3}, "unknown recipe field 'epoch'"),
        ({"epochs": "3"}, "recipe field 'epochs' needs int"),
        ({"epochs": 2.5}, "recipe field 'epochs' needs int"),
        ({"flip": 1}, "recipe field 'flip' needs bool"),
        ({"lr": True}, "recipe field 'lr' needs float"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, muon, adam, adamw"),
        ({"amp": "int8"}, "amp must be one of"),
        ({"ema_decay": 1.0}, "ema_decay must be in [0, 1)"),
        ({"rotate": -5.0}, "rotate must be in [0, 180] degrees"),
        ({"zoom": 1.0}, "zoom must be in [0, 1)"),
        ({"model": "resnet18"}, "whiten applies only to model fastnet"),
        ({"chroma_subsampling": 3}, "chroma_subsampling must be one of 1, 2, 4"),
        ({"resize": "crop"}, "resize must be one of stretch, center_crop, letterbox"),
        ({"interpolation": "area"}, "interpolation must be one of nearest, bilinear, bicubic"),
        ({"chroma_subsampling": 2, "channels": 1}, "chroma_subsampling needs RGB input"),
        ({"chroma_subsampling": 4, "image_size": 30}, "image_size must be divisible by chroma"),
        ({"epoch_sizes": (16, 4)}, "epoch_sizes must be >= 8 pixels"),
        ({"epochs": 2, "epoch_sizes": (16, 16, 24)}, "epoch_sizes has more entries than epochs"),
        ({"image_size": 24, "epoch_sizes": (32,)}, "epoch_sizes must not exceed image_size"),
        ({"epoch_sizes": [16]}, "'epoch_sizes' needs a comma-separated list of int"),
        ({"gemm_weight_grad_side": -1}, "gemm_weight_grad_side must be >= 0 (0 = off)"),
        ({"gemm_weight_grad_side": 8, "compile": True}, "does not combine with compile"),
    ],
)
def test_override_errors_are_one_line(changes: dict[str, object], message: str) -> None:
    with pytest.raises(RecipeError) as info:
        get_recipe("demo_fastnet").override(**changes)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_override_from_strings_parses_by_type() -> None:
    recipe = get_recipe("demo_fastnet").override_from_strings(
        [
            "epochs=7",
            "lr=0.01",
            "flip=off",
            "image_size=none",
            "step_milestones=2,4.5",
            "weights=imagenet",
            "nesterov=YES",
            "label-smoothing=0.2",
            "epoch_sizes=16,16,24",
        ]
    )
    assert recipe.epochs == 7
    assert recipe.lr == 0.01
    assert recipe.flip is False
    assert recipe.image_size is None
    assert recipe.step_milestones == (2.0, 4.5)
    assert recipe.weights == "imagenet"
    assert recipe.nesterov is True
    assert recipe.label_smoothing == 0.2
    assert recipe.epoch_sizes == (16, 16, 24)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("epochs", "--set needs key=value"),
        ("colour=red", "unknown recipe field 'colour'"),
        ("epochs=many", "recipe field 'epochs' needs int, got 'many'"),
        ("flip=maybe", "recipe field 'flip' needs bool"),
    ],
)
def test_override_from_strings_errors(item: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        get_recipe("demo_fastnet").override_from_strings([item])


def test_unknown_recipe_lists_known_names() -> None:
    with pytest.raises(RecipeError, match=r"unknown recipe 'nope'.*demo_fastnet"):
        get_recipe("nope")


def test_default_recipe_prefers_registered_and_falls_back() -> None:
    assert default_recipe("cifar10", "resnet18") is RECIPES["cifar10_resnet18"]
    generic = default_recipe("folder", "resnet18")
    assert (generic.name, generic.dataset, generic.model) == (
        "folder_resnet18",
        "folder",
        "resnet18",
    )
