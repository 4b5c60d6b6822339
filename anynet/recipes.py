"""Named training recipes: documented sets of hyperparameters for `anynet train --recipe NAME`.

A recipe is a mapping of `TrainConfig` fields to values; options given explicitly on the
command line override it, and the resolved configuration is printed and stored in the model
file as for any run (with the recipe's name beside it). Every recipe keeps the network
784-H-10 with ReLU and softmax: what changes is how it is trained (width, momentum, schedule,
weight decay, distortions and preprocessing of the training images, epochs, a teacher).

The published reference for H = 800 is Simard, Steinkraus & Platt (ICDAR 2003), as listed in
LeCun's MNIST table: 1.6% test error without distortions, 1.1% with affine ones, 0.7% with
elastic ones. `python bench/accuracy.py` runs the recipes and prints anynet's error beside
those; docs/tuning.md records how the values below were chosen.
"""

from __future__ import annotations

from types import MappingProxyType

# Trained on all 60,000 training images (no validation split), as the published rows were.
_H800 = {"hidden": 800, "batch_size": 64, "momentum": 0.9, "nesterov": True,
         "schedule": "cosine", "lr": 0.1, "weight_decay": 1e-4, "val_size": 0}

# Milder affine distortions than h800-affine's (+-15 degrees, 15%, slant 0.3, 2 px).
_MILD = {"rotate": 10.0, "scale": 0.1, "shear": 0.2, "shift": 1.5}

RECIPES = MappingProxyType({
    # The assignment's network as `anynet train` trains it without options.
    "default": {},
    # 800 hidden units, no distortions: Nesterov momentum, cosine annealing, weight decay.
    "h800": {**_H800, "epochs": 40},
    # The same network on affine distortions (rotation, scale, slant, shift), drawn afresh for
    # every image of every epoch: more epochs, since no two epochs see the same images.
    "h800-affine": {**_H800, "epochs": 100, "augment": "affine"},
    # Elastic distortions (Simard 2003: sigma 4, alpha 34) combined with affine ones.
    "h800-elastic": {**_H800, "epochs": 200, "augment": "affine+elastic"},
    # The best found without distortions (or a teacher): label smoothing on h800.
    "best-plain": {**_H800, "epochs": 40, "label_smoothing": 0.1},
    # The fewest multiply-adds to 98% test accuracy: 256 hidden units, 3 epochs.
    "speed-98": {**_H800, "hidden": 256, "epochs": 3},
    # 99% needs distortions; milder ones than h800-affine's converge in 10 epochs at H = 400.
    "speed-99": {**_H800, "hidden": 400, "epochs": 10, "augment": "affine", **_MILD},
    # h800-affine on deslanted digits (anynet.preprocess: each digit's slant undone first), with
    # speed-99's milder distortions: deslanting already takes away what slants would teach.
    "h800-affine-deslant": {**_H800, "epochs": 100, "augment": "affine", "preprocess": "deslant",
                            **_MILD},
    # The best single network found: h800-affine-deslant distilled from a committee of three
    # h800-affine-deslant networks (TEACHERS), their probabilities softened at temperature 3.
    "best": {**_H800, "epochs": 100, "augment": "affine", "preprocess": "deslant", **_MILD,
             "distill": 0.5, "temperature": 3.0},
})

# The recipes that distil (anynet.distill) learn from a committee trained first: recipe -> (the
# teachers' recipe, their seeds: those of the runs docs/tuning.md reports). On the command line,
# train the teachers, then name their files with --teacher; bench/accuracy.py does both.
TEACHERS = MappingProxyType({"best": ("h800-affine-deslant", (43, 45, 46))})

DESCRIPTIONS = MappingProxyType({
    "default": "784-30-10, plain SGD, 30 epochs: the assignment's network (~97.5% test accuracy)",
    "h800": "784-800-10, Nesterov momentum, cosine schedule, no distortions",
    "h800-affine": "784-800-10 on affine distortions of the training images",
    "h800-elastic": "784-800-10 on affine and elastic distortions (Simard 2003)",
    "best-plain": "784-800-10 with label smoothing 0.1, 40 epochs, no distortions",
    "speed-98": "784-256-10, Nesterov momentum, 3 epochs: 98% test accuracy in the least time",
    "speed-99": "784-400-10 on mild affine distortions, 10 epochs: 99% in the least time",
    "h800-affine-deslant": "784-800-10 on mild affine distortions of deslanted digits",
    "best": "784-800-10 on mild affine distortions of deslanted digits, distilled from three "
            "h800-affine-deslant networks (seeds 43, 45, 46, given with --teacher) at "
            "temperature 3",
})


def recipe(name: str) -> dict:
    """The fields of recipe `name`; KeyError naming the recipes there are."""
    if name not in RECIPES:
        raise KeyError(f"no recipe {name!r}; the recipes are: {', '.join(RECIPES)}")
    return dict(RECIPES[name])
