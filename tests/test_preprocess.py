"""Preprocessing of the digits (anynet.preprocess): what deslanting and width normalization do to
digits drawn for the purpose, their refusals, that every backend computes what NumPy does, and
that a network carries its preprocessing everywhere it goes: the model file, training (resumed
bit for bit), distillation, committees, sweeps, export and the command line."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import make_mnist_dir, synthetic_mnist

from anynet.backend import get_backend, to_numpy
from anynet.cli import main
from anynet.committee import Committee
from anynet.config import TrainConfig
from anynet.errors import ModelFileError
from anynet.modelio import load_model, save_model, save_model_safetensors
from anynet.modelio._npz import read_npz, write_npz
from anynet.network import PARAM_NAMES, TwoLayerNet
from anynet.preprocess import FORMS, MAX_SLANT, PIECE_ROWS, SIDE, Preprocessing
from anynet.training import Trainer
from tests.test_training import StopAtEpochEnd, host

DESLANT, WIDTH16 = Preprocessing(deslant=True), Preprocessing(width=16)
BOTH = Preprocessing(deslant=True, width=16)


def moments(image):
    """(rbar, cbar, mu11 / mu02) of one image (S, S), in float64."""
    image = np.asarray(image, dtype=np.float64)
    r, c = np.mgrid[0:SIDE, 0:SIDE]
    m = image.sum()
    rbar, cbar = (image * r).sum() / m, (image * c).sum() / m
    return rbar, cbar, (image * (r - rbar) * (c - cbar)).sum() / (image * (r - rbar) ** 2).sum()


def slanted_stroke(slant: float, thickness: int = 2) -> np.ndarray:
    """A stroke down rows 4..23 whose column moves `slant` per row: (S, S) uint8."""
    image = np.zeros((SIDE, SIDE))
    for r in range(4, 24):
        c = 13.5 + slant * (r - 13.5)
        for dc in range(thickness):
            lo = int(np.floor(c)) + dc
            image[r, lo] += 255 * (1 - (c - np.floor(c)))
            image[r, lo + 1] += 255 * (c - np.floor(c))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def box(top: int, left: int, height: int, width: int) -> np.ndarray:
    image = np.zeros((SIDE, SIDE), dtype=np.uint8)
    image[top:top + height, left:left + width] = 200
    return image


def ink_columns(image) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    return np.flatnonzero(image.max(axis=0) > image.max() / 2)


@pytest.mark.parametrize("text, expected", [
    ("none", Preprocessing()), ("deslant", DESLANT), ("width:16", WIDTH16),
    ("deslant+width:16", BOTH), ("width:08", Preprocessing(width=8)),
    ("width:24", Preprocessing(width=24))])
def test_the_forms_parse_and_print_canonically(text, expected):
    assert Preprocessing.parse(text) == expected
    assert Preprocessing.parse(str(expected)) == expected
    assert str(Preprocessing.parse(text)) == text.replace(":08", ":8")


@pytest.mark.parametrize("text", [
    "", "Deslant", "deslant+", "+width:16", "width:", "width:7", "width:25", "width:1e1",
    "width:16+deslant", "deslant+deslant", "width:\u0663\u0663", "width:-9", "deslant " * 9, 3,
    None, b"deslant"])
def test_everything_else_is_refused_naming_the_forms(text):
    with pytest.raises(ValueError, match=r"preprocessing must be one of|the width must be"):
        Preprocessing.parse(text)
    assert "deslant+width:W" in FORMS


@pytest.mark.parametrize("slant", [-0.6, -0.3, 0.25, 0.5])
def test_deslanting_stands_a_slanted_stroke_upright_about_its_centroid(slant):
    image = slanted_stroke(slant)
    before = moments(image)
    assert abs(before[2] - slant) < 0.05  # the moments see the slant drawn
    out = DESLANT(image.reshape(1, -1)).reshape(SIDE, SIDE)
    after = moments(out)
    assert abs(after[2]) < 0.03
    np.testing.assert_allclose(after[:2], before[:2], atol=0.15)  # the centroid stays
    assert abs(int(out.sum()) - int(image.sum())) < 0.03 * image.sum()  # no ink lost


def test_a_slant_beyond_the_limit_is_straightened_only_as_far_as_the_limit():
    image = np.zeros((SIDE, SIDE), dtype=np.uint8)
    for r in range(10, 18):  # 2 columns per row: 63 degrees
        image[r, 6 + 2 * (r - 10)] = 255
    after = moments(DESLANT(image.reshape(1, -1)).reshape(SIDE, SIDE))
    assert after[2] == pytest.approx(2 - MAX_SLANT, abs=0.1)


def test_width_normalization_stretches_and_squeezes_the_box_to_w_columns_centred():
    for width in (8, 20):
        image = box(4, 9, 20, 12)  # 20 rows, 12 columns
        out = Preprocessing(width=width)(image.reshape(1, -1)).reshape(SIDE, SIDE)
        columns = ink_columns(out)
        assert abs(len(columns) - width) <= 1
        assert abs((columns[0] + columns[-1]) / 2 - 13.5) <= 0.5
        np.testing.assert_array_equal(np.flatnonzero(out.max(axis=1) > 100), np.arange(4, 24))


def test_narrow_digits_empty_images_and_no_images_are_left_as_they_are():
    one = box(4, 12, 20, 4)  # 4 / 20 < NARROW: a one
    empty = np.zeros((SIDE, SIDE), dtype=np.uint8)
    images = np.stack([one, empty]).reshape(2, -1)
    np.testing.assert_array_equal(WIDTH16(images), images)
    np.testing.assert_array_equal(DESLANT(empty.reshape(1, -1)), empty.reshape(1, -1))
    assert BOTH(np.zeros((0, SIDE * SIDE), np.float32)).shape == (0, SIDE * SIDE)
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        DESLANT(np.zeros((2, 28, 28), np.uint8))


def test_pixels_and_floats_read_alike_and_keep_their_dtype():
    images, _ = synthetic_mnist(40, seed=3)
    pixels = images.reshape(40, -1)
    for kind in (DESLANT, WIDTH16, BOTH):
        out = kind(pixels)
        assert out.dtype == np.uint8 and out.shape == pixels.shape
        floats = kind(pixels.astype(np.float64) / 255)
        assert floats.dtype == np.float64
        np.testing.assert_allclose(floats * 255, out, atol=0.5 + 1e-9)  # out is rounded
    assert Preprocessing()(pixels) is pixels


def test_pieces_of_piece_rows_give_what_one_call_gives():
    images, _ = synthetic_mnist(PIECE_ROWS + 5, seed=4)
    pixels = images.reshape(len(images), -1)
    whole = BOTH(pixels)
    np.testing.assert_array_equal(whole[-5:], BOTH(pixels[-5:]))
    np.testing.assert_array_equal(whole[:3], BOTH(pixels[:3]))


def test_the_backend_computes_what_numpy_computes(backend):
    images, _ = synthetic_mnist(64, seed=5)
    floats = images.reshape(64, -1).astype(np.float32) / 255
    for kind in (DESLANT, WIDTH16, BOTH):
        expected = kind(floats)
        got = to_numpy(kind(backend.asarray(floats)))
        np.testing.assert_allclose(got, expected, atol=2e-4)
        pixels = to_numpy(kind(backend.asarray(images.reshape(64, -1))))
        assert pixels.dtype == np.uint8
        # rounding may fall either side of .5 where the float sums differ in the last bit
        assert np.abs(pixels.astype(int) - kind(images.reshape(64, -1)).astype(int)).max() <= 1


def test_a_network_preprocesses_what_it_is_given(backend):
    images, _ = synthetic_mnist(30, seed=6)
    pixels = images.reshape(30, -1)
    plain = TwoLayerNet(n_hidden=12, seed=1, backend=backend)
    net = plain.with_preprocessing("deslant+width:16")
    assert net.preprocessing == BOTH and plain.preprocessing == Preprocessing()
    np.testing.assert_array_equal(to_numpy(net.predict_proba(pixels)),
                                  to_numpy(plain.predict_proba(BOTH(backend.asarray(pixels)))))
    np.testing.assert_array_equal(to_numpy(net.predict(pixels[0])),
                                  to_numpy(plain.predict(BOTH(backend.asarray(pixels[:1])))))


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_the_model_file_carries_the_preprocessing(tmp_path, suffix):
    net = TwoLayerNet(n_hidden=5, seed=2, preprocessing="width:12")
    path = tmp_path / f"m{suffix}"
    (save_model if suffix == ".npz" else save_model_safetensors)(path, net)
    loaded, record = load_model(path)
    assert loaded.preprocessing == Preprocessing(width=12)
    assert record["preprocessing"] == "width:12"
    plain = tmp_path / f"plain{suffix}"
    (save_model if suffix == ".npz" else save_model_safetensors)(plain, TwoLayerNet(n_hidden=5))
    loaded, record = load_model(plain)
    assert loaded.preprocessing == Preprocessing() and "preprocessing" not in record


@pytest.mark.parametrize("value, problem", [
    ("width:99", "the width must be"), (7, "preprocessing must be one of"),
    ("rot13", "preprocessing must be one of"), ({"deslant": True}, "preprocessing must be")])
def test_a_damaged_preprocessing_in_a_model_file_is_one_line(tmp_path, value, problem):
    path = tmp_path / "m.npz"
    save_model(path, TwoLayerNet(n_hidden=5), {})
    arrays, record = read_npz(path, "anynet-model", list(PARAM_NAMES))
    write_npz(path, arrays, {**record, "preprocessing": value})
    with pytest.raises(ModelFileError, match=problem) as caught:
        load_model(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_model_of_other_inputs_cannot_claim_a_preprocessing(tmp_path):
    path = tmp_path / "m.npz"
    save_model(path, TwoLayerNet(n_in=100, n_hidden=5), {})
    arrays, record = read_npz(path, "anynet-model", list(PARAM_NAMES))
    write_npz(path, arrays, {**record, "preprocessing": "deslant"})
    with pytest.raises(ModelFileError, match="takes 100 inputs"):
        load_model(path)


def digits(n=600, seed=0):
    images, labels = synthetic_mnist(n, seed)
    return images.reshape(n, -1), labels


def test_training_sees_the_preprocessed_images_and_returns_a_net_that_preprocesses(backend):
    images, labels = digits()
    cfg = TrainConfig(hidden=16, epochs=2, batch_size=32, lr=0.1, val_size=0,
                      preprocess="deslant+width:16")
    taught = Trainer(cfg, images, labels, backend=backend).fit()
    assert taught.net.preprocessing == BOTH
    # the same run on images preprocessed beforehand, without the option: the same weights
    before = Trainer(TrainConfig(**{**cfg.to_dict(), "preprocess": "none"}),
                     to_numpy(BOTH(images)), labels, backend=backend).fit()
    assert before.net.preprocessing == Preprocessing()
    for k, v in host(taught.net.params).items():
        np.testing.assert_array_equal(host(before.net.params)[k], v, err_msg=k)
    assert taught.state.history == [{**h, "seconds": t["seconds"]} for h, t in
                                    zip(before.state.history, taught.state.history, strict=True)]
    np.testing.assert_array_equal(to_numpy(taught.net.predict_proba(images[:50])),
                                  to_numpy(before.net.predict_proba(BOTH(images[:50]))))


def test_a_preprocessed_run_resumes_bit_for_bit(tmp_path, backend):
    images, labels = digits()
    cfg = TrainConfig(hidden=8, epochs=3, batch_size=32, lr=0.1, val_size=0, preprocess="deslant",
                      augment="affine")
    whole = Trainer(cfg, images, labels, backend=backend).fit()
    ckpt = tmp_path / "run.checkpoint.npz"
    first = Trainer(cfg, images, labels, backend=backend, checkpoint_path=ckpt,
                    callbacks=[StopAtEpochEnd(0)])
    assert first.fit().status == "stopped"
    from anynet.modelio import load_checkpoint

    loaded = load_checkpoint(ckpt)
    assert loaded[2]["config"]["preprocess"] == "deslant"
    trainer = Trainer(TrainConfig.from_dict(loaded[2]["config"]), images, labels,
                      backend=backend, checkpoint_path=ckpt)
    resumed = trainer.fit(trainer.state_from_checkpoint(*loaded))
    assert resumed.net.preprocessing == DESLANT
    for k, v in host(whole.net.params).items():
        np.testing.assert_array_equal(host(resumed.net.params)[k], v, err_msg=k)


def test_other_data_than_28x28_images_is_refused():
    with pytest.raises(ValueError, match="reads 28x28 images"):
        Trainer(TrainConfig(hidden=4, epochs=1, val_size=0, preprocess="deslant"),
                np.zeros((10, 100), np.uint8), np.arange(10) % 3)


def test_a_teacher_must_preprocess_as_its_student_and_then_reads_its_images_once(backend):
    images, labels = digits(200)
    teacher = TwoLayerNet(n_hidden=8, seed=3, backend=backend, preprocessing="deslant")
    cfg = dict(hidden=8, epochs=1, batch_size=50, lr=0.1, val_size=0, distill=0.5)
    with pytest.raises(ValueError, match="teacher member 1 was trained with preprocess deslant, "
                                         "this run uses none"):
        Trainer(TrainConfig(**cfg), images, labels, backend=backend, teacher=teacher)
    trainer = Trainer(TrainConfig(**cfg, preprocess="deslant"), images, labels, backend=backend,
                      teacher=teacher)
    members = trainer.levers.teacher.committee.members
    assert [m.preprocessing for m in members] == [Preprocessing()]  # the images are done once
    np.testing.assert_array_equal(to_numpy(members[0].params["W1"]),
                                  to_numpy(teacher.params["W1"]))


def test_a_committee_member_preprocesses_for_itself(backend):
    images, _ = digits(40)
    a = TwoLayerNet(n_hidden=8, seed=1, backend=backend, preprocessing="deslant")
    b = TwoLayerNet(n_hidden=9, seed=2, backend=backend)
    c = TwoLayerNet(n_hidden=7, seed=3, backend=backend, preprocessing="width:12")
    committee = Committee([a, b, c])
    mean = sum(to_numpy(m.predict_proba(images)).astype(np.float64) for m in (a, b, c)) / 3
    np.testing.assert_allclose(to_numpy(committee.predict_proba(images)), mean, rtol=1e-5,
                               atol=1e-7)


def test_the_command_line_trains_records_evaluates_and_refuses(tmp_path, capsys):
    data = make_mnist_dir(tmp_path / "data", n_train=400, n_test=100, seed=0)
    out = tmp_path / "m.npz"
    common = ["--data-dir", str(data), "--no-verify", "--hidden", "16", "--epochs", "2",
              "--val-size", "50", "--threads", "1"]
    assert main(["train", *common, "--preprocess", "deslant+width:16", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "  preprocessing: deslant+width:16 (every image; the model applies it too)" in said
    net, record = load_model(out)
    assert net.preprocessing == BOTH and record["config"]["preprocess"] == "deslant+width:16"
    assert main(["evaluate", str(out), "--data-dir", str(data), "--no-verify"]) == 0
    assert "images preprocessed: deslant+width:16" in capsys.readouterr().out
    assert main(["export", str(out), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "preprocesses its images (deslant+width:16)" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    assert main(["train", *common, "--preprocess", "width:30", "--out",
                 str(tmp_path / "x.npz")]) == 2
    assert "the width must be an integer from 8 to 24, got 30" in capsys.readouterr().err
    assert main(["train", *common, "--out", str(tmp_path / "s.npz"), "--teacher", str(out)]) == 2
    assert "trained with preprocess deslant+width:16, this run uses none" in \
        capsys.readouterr().err


def test_a_sweep_varies_the_preprocessing_and_its_models_carry_it(tmp_path, capsys):
    from anynet.sweep import Run, parse_values, run_id

    assert parse_values("preprocess", "none,deslant,deslant+width:16") == [
        "none", "deslant", "deslant+width:16"]
    plain = TrainConfig(hidden=4)
    # a sweep made before anynet preprocessed keeps its ids: "none" is left out of them
    assert run_id(Run(plain)) == run_id(Run(TrainConfig(hidden=4, preprocess="none")))
    assert run_id(Run(plain)) != run_id(Run(TrainConfig(hidden=4, preprocess="deslant")))
    data = make_mnist_dir(tmp_path / "data", n_train=300, n_test=50, seed=1)
    folder = tmp_path / "sweep"
    assert main(["sweep", "--data-dir", str(data), "--no-verify", "--workers", "0",
                 "--hidden", "8", "--epochs", "1", "--val-size", "0", "--preprocess",
                 "none,width:16", "--out", str(folder)]) == 0
    kinds = sorted(str(load_model(p)[0].preprocessing) for p in (folder / "runs").glob("*.npz"))
    assert kinds == ["none", "width:16"]


def test_a_pickled_network_keeps_its_preprocessing():
    import pickle

    net = TwoLayerNet(n_hidden=4, preprocessing="deslant")
    assert pickle.loads(pickle.dumps(net)).preprocessing == DESLANT
    assert get_backend("numpy").name == "numpy"


def test_what_a_model_is_shown_to_have_read():
    from anynet.preprocess import as_seen_by

    images, _ = digits(5)
    a = TwoLayerNet(n_hidden=4, seed=1, preprocessing="deslant")
    b = TwoLayerNet(n_hidden=4, seed=2, preprocessing="deslant")
    plain = TwoLayerNet(n_hidden=4, seed=3)
    np.testing.assert_array_equal(as_seen_by(a, images), DESLANT(images))
    np.testing.assert_array_equal(as_seen_by(Committee([a, b]), images), DESLANT(images))
    assert as_seen_by(Committee([a, plain]), images) is images  # each member sees its own
    assert as_seen_by(plain, images) is images


def test_predict_shows_the_picture_the_network_read(tmp_path, capsys):
    net = TwoLayerNet(n_hidden=4, seed=1, preprocessing="width:20")
    save_model(tmp_path / "m.npz", net)
    picture = np.zeros((28, 28), np.uint8)
    picture[4:24, 9:19] = 255  # 10 columns wide, 20 tall: normalized to 20 columns
    np.save(tmp_path / "bar.npy", picture)
    assert main(["predict", str(tmp_path / "m.npz"), str(tmp_path / "bar.npy"), "--show"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "@" in line]
    assert rows and max(line.count("@") for line in rows) >= 2 * 18  # two characters a pixel


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3e38])
def test_non_finite_or_huge_floats_stay_in_their_own_image(bad, backend):
    """A hostile float image never makes a wild index: its own outputs may be nan, the
    others' are what they are alone."""
    images, _ = digits(3)
    floats = images.astype(np.float32) / 255
    floats[1, 300] = bad
    for kind in (DESLANT, WIDTH16, BOTH):
        with np.errstate(all="ignore"):  # NumPy warns of the nan it makes, as a forward pass would
            out = to_numpy(kind(backend.asarray(floats)))
        np.testing.assert_allclose(out[[0, 2]], to_numpy(kind(backend.asarray(floats[[0, 2]]))),
                                   atol=1e-6)
        assert out.shape == floats.shape


def test_the_server_names_the_preprocessing_and_shows_the_picture_read():
    """`anynet serve`'s model description names it, and its answer's "input" is the picture
    after the model's preprocessing (the page draws it)."""
    pytest.importorskip("PIL", reason="anynet serve reads pictures with Pillow (anynet[image])")
    import io

    from PIL import Image

    from anynet.serve.predictor import Predictor

    net = TwoLayerNet(n_hidden=4, seed=1, preprocessing="width:20")
    predictor = Predictor(net, {}, "m.npz")
    try:
        assert predictor.describe()["preprocessing"] == "width:20"
        picture = np.zeros((28, 28), np.uint8)
        picture[4:24, 9:19] = 255  # 10 columns by 20 rows: 20 columns once normalized
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG")
        seen = np.array(predictor.predict(buffer.getvalue(), "image/png")["input"])
        assert (seen.max(axis=0) > 0.5).sum() >= 18
        plain = Predictor(TwoLayerNet(n_hidden=4, seed=1), {}, "p.npz")
        assert plain.describe()["preprocessing"] == "none"
        seen = np.array(plain.predict(buffer.getvalue(), "image/png")["input"])
        assert (seen.max(axis=0) > 0.5).sum() <= 11
        plain.close()
    finally:
        predictor.close()
