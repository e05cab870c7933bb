"""The full-resolution detail path (``model.detail_path``, issue 23).

A decoder that predicts at 1/4 and upsamples cannot map a 1-pixel-wide river or road;
the detail path adds a light full-resolution stream over every band. These tests check
that it does what it is for (a thin line is learned with it and not without), that it
exists for every variant with a decoder and reads only the bands the variant reads, and
that adapters written before it load and predict as before.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F

from gopt_geo.checkpoint import METADATA_KEY, load_adapter, save_adapter
from gopt_geo.data.bands import BandRouting
from gopt_geo.data.classes import WHU_OPT_SAR_CLASSES
from gopt_geo.errors import InputError
from gopt_geo.models import ModelConfig, build_model
from gopt_geo.models.backbone import pad_to_multiple
from gopt_geo.models.decoder import (
    PREDICT_CHUNK,
    apply_pixel_mlp,
    pixel_mlp,
    sample_points,
    upsample_at,
)

pytestmark = pytest.mark.filterwarnings("ignore::gopt_geo.models.RandomBackboneWarning")

DECODER_VARIANTS = ["gopt", "optical_only", "optical_all_bands", "early_fusion", "static_prompt"]


def tiny(**kwargs) -> ModelConfig:
    return ModelConfig(
        backbone="test_efficientnet",
        weights="random",
        prompt_dim=16,
        prompt_heads=2,
        decoder_dim=16,
        **kwargs,
    )


def line_batch(g: torch.Generator, n: int = 8, size: int = 48):
    """Noise, and one vertical line 1 pixel wide per sample (class 1) that only the
    first auxiliary band shows; everything else is class 0."""
    rgb = torch.randn(n, 3, size, size, generator=g) * 0.5
    aux = torch.randn(n, 2, size, size, generator=g) * 0.5
    target = torch.zeros(n, size, size, dtype=torch.long)
    columns = torch.randint(2, size - 2, (n,), generator=g)
    target[torch.arange(n), :, columns] = 1
    aux[:, 0] += 3.0 * (target == 1).float()
    return rgb, aux, target


def line_iou(detail: bool, seed: int, steps: int = 50) -> float:
    """IoU of the line class on held-out samples after ``steps`` of training."""
    torch.manual_seed(seed)
    model = build_model(tiny(num_classes=2, aux_channels=2, detail_path=detail)).train()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=0.02)
    g = torch.Generator().manual_seed(seed)
    weight = torch.tensor([1.0, 5.0])  # the line is 1/48 of the pixels
    for _ in range(steps):
        rgb, aux, target = line_batch(g)
        out = model(rgb, aux, target)
        loss = F.cross_entropy(out.logits, out.labels(target), weight=weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        rgb, aux, target = line_batch(torch.Generator().manual_seed(1000 + seed), n=16)
        line = model(rgb, aux).logits.argmax(1) == 1
    truth = target == 1
    return float((line & truth).sum() / (line | truth).sum().clamp_min(1))


def test_a_one_pixel_line_is_learned_with_the_detail_path_and_not_without():
    # measured over seeds 0-5: without 0.00 every time, with 0.80-1.00
    without, with_detail = line_iou(False, seed=0), line_iou(True, seed=0)
    assert with_detail - without >= 0.5, (without, with_detail)
    assert with_detail >= 0.6


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_every_decoder_variant_has_it_and_an_untrained_one_changes_nothing(variant):
    torch.manual_seed(0)
    plain = build_model(tiny(variant=variant)).eval()
    torch.manual_seed(0)
    detailed = build_model(tiny(variant=variant, detail_path=True)).eval()
    assert plain.decoder.detail is None and detailed.decoder.detail is not None
    # added, nothing changed: the other tensors keep their names, shapes and values
    plain_state, detailed_state = plain.state_dict(), detailed.state_dict()
    assert set(detailed_state) - set(plain_state) == {
        k for k in detailed_state if k.startswith("decoder.detail.")
    }
    assert all(torch.equal(v, detailed_state[k]) for k, v in plain_state.items())
    g = torch.Generator().manual_seed(1)
    rgb, aux = torch.randn(2, 3, 37, 45, generator=g), torch.randn(2, 3, 37, 45, generator=g)
    with torch.no_grad():  # zero-initialised: the decoder's map until it is trained
        assert torch.equal(plain(rgb, aux).logits, detailed(rgb, aux).logits)
    detailed.train()
    out = detailed(rgb, aux, torch.randint(0, 7, (2, 37, 45), generator=g))
    (out.logits.mean() + sum(out.losses.values())).backward()
    assert detailed.decoder.detail.classifier.weight.grad.abs().sum() > 0
    assert detailed.decoder.detail.gate.bias.grad.abs().sum() > 0  # the gate learns too


@pytest.mark.parametrize("variant", ["optical_only", "static_prompt", "optical_all_bands"])
def test_the_detail_path_reads_only_the_bands_the_variant_reads(variant):
    model = build_model(tiny(variant=variant, detail_path=True)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.decoder.detail.classifier.weight)  # as if trained
    g = torch.Generator().manual_seed(0)
    rgb = torch.randn(1, 3, 32, 32, generator=g)
    aux = torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        changed = model(rgb, aux).logits != model(rgb, aux + 1).logits
    # models that ignore the auxiliary input (they predict without SAR) still do
    assert bool(changed.any()) == model.reads_aux


def older_adapter(path, model, *, tensors=None, model_fields=()):
    """``model`` saved as an adapter at ``path``, then rewritten as an older gopt-geo
    wrote it: ``tensors`` maps the saved tensors to the older ones; ``model_fields`` are
    left out of the recorded model config."""
    routing = BandRouting(("B", "G", "R", "NIR"), ("VV", "VH"))
    classes = WHU_OPT_SAR_CLASSES.to_dict()
    save_adapter(path, model, {"routing": routing.to_dict(), "classes": classes})
    with safetensors.safe_open(str(path), framework="pt") as f:
        document = json.loads(f.metadata()[METADATA_KEY])
    for name in model_fields:
        del document["model"][name]
    saved = safetensors.torch.load_file(str(path))
    saved = tensors(saved) if tensors else saved
    safetensors.torch.save_file(saved, str(path), metadata={METADATA_KEY: json.dumps(document)})
    return path


def test_an_adapter_written_before_the_detail_path_loads_with_it_off(tmp_path):
    model = build_model(tiny()).eval()
    # what an older gopt-geo wrote: no detail_path, no detail_dim
    fields = ("detail_path", "detail_dim", "detail_sample_block")
    path = older_adapter(tmp_path / "old.safetensors", model, model_fields=fields)

    loaded, meta = load_adapter(path)
    assert meta.model.detail_path is False and loaded.decoder.detail is None
    g = torch.Generator().manual_seed(0)
    rgb, aux = torch.randn(1, 3, 40, 40, generator=g), torch.randn(1, 3, 40, 40, generator=g)
    with torch.no_grad():
        assert torch.equal(loaded(rgb, aux).logits, model(rgb, aux).logits)


def test_detail_dim_is_checked():
    with pytest.raises(ValueError, match="detail_dim must be >= 1"):
        ModelConfig(detail_path=True, detail_dim=0)


def test_an_adapter_with_the_first_detail_path_is_refused_with_a_hint(tmp_path):
    model = build_model(tiny(detail_path=True)).eval()

    def first_design(tensors):  # the 3x3 stem, context and mix in place of the MLP
        tensors = {k: v for k, v in tensors.items() if not k.startswith("decoder.detail.mlp.")}
        tensors["decoder.detail.stem.weight"] = torch.zeros(48, 6, 3, 3)
        tensors["decoder.detail.mix.weight"] = torch.zeros(48, 48, 1, 1)
        return tensors

    path = older_adapter(tmp_path / "first.safetensors", model, tensors=first_design)
    with pytest.raises(InputError, match="first detail path.*retrain"):
        load_adapter(path)


def test_detail_sample_block_is_checked():
    with pytest.raises(ValueError, match="detail_sample_block must be >= 1"):
        ModelConfig(detail_path=True, detail_sample_block=0)


@pytest.mark.parametrize("mode", ["train", "predict"])
def test_the_matrix_product_mlp_is_the_1x1_convolutions(mode):
    # the same tensors as conv -> batch norm -> ReLU (x2) -> 1x1 classifier; predicting,
    # batch norm is folded into the weights and the pixels go through in chunks
    # float64: the two forms sum in different orders, and float32 sums of 20k pixels
    # differ in the 4th digit
    torch.manual_seed(0)
    mlp, classifier = pixel_mlp(5, 12).double(), torch.nn.Conv2d(12, 4, kernel_size=1).double()
    for bn in (mlp[1], mlp[4]):  # trained-looking statistics and affine parameters
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        torch.nn.init.normal_(bn.weight)
        torch.nn.init.normal_(bn.bias)
    x = torch.randn(
        2, 5, 97, 101, dtype=torch.float64
    )  # more pixels than one chunk, and not a multiple of it
    assert x[:, 0].numel() > PREDICT_CHUNK
    reference_mlp = pixel_mlp(5, 12).double()
    reference_classifier = torch.nn.Conv2d(12, 4, kernel_size=1).double()
    reference_mlp.load_state_dict(mlp.state_dict())
    reference_classifier.load_state_dict(classifier.state_dict())
    if mode == "train":
        mlp.train(), reference_mlp.train()
        got = apply_pixel_mlp(mlp, classifier, x)
        want = reference_classifier(reference_mlp(x))
        got.square().sum().backward()
        want.square().sum().backward()
        for a, b in zip(mlp.parameters(), reference_mlp.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad)
        for name, buffer in mlp.named_buffers():  # running averages updated alike
            torch.testing.assert_close(buffer, dict(reference_mlp.named_buffers())[name])
    else:
        mlp.eval(), reference_mlp.eval()
        with torch.no_grad():
            got = apply_pixel_mlp(mlp, classifier, x)
            want = reference_classifier(reference_mlp(x))
    torch.testing.assert_close(got, want)


def test_sample_points_draws_one_pixel_per_block_of_the_image_not_its_padding():
    torch.manual_seed(0)
    points = sample_points(3, 37, 45, 2, "cpu", row_length=64)
    assert points.shape == (3, 19 * 23)  # blocks cut by the edge (37, 45 odd) count too
    rows, cols = points // 64, points % 64
    assert bool((rows < 37).all() and (cols < 45).all())
    blocks = (rows // 2) * 23 + cols // 2
    for b in blocks:  # each block exactly once
        assert sorted(b.tolist()) == list(range(19 * 23))
    torch.manual_seed(0)
    assert torch.equal(points, sample_points(3, 37, 45, 2, "cpu", row_length=64))
    # every pixel of a block is drawn about equally often (uniform within the block)
    many = sample_points(4000, 2, 2, 2, "cpu")
    counts = torch.bincount(many.flatten(), minlength=4).float() / 4000
    assert bool((counts - 0.25).abs().max() < 0.03), counts
    assert sample_points(1, 4, 4, 1, "cpu").sort().values.tolist() == [list(range(16))]


def test_training_scores_a_sample_of_the_pixels_and_the_labels_follow_it():
    torch.manual_seed(0)
    model = build_model(tiny(num_classes=5, aux_channels=2, detail_path=True))
    g = torch.Generator().manual_seed(0)
    rgb, aux = torch.randn(2, 3, 40, 52, generator=g), torch.randn(2, 2, 40, 52, generator=g)
    target = torch.randint(0, 5, (2, 40, 52), generator=g)
    model.train()
    out = model(rgb, aux, target)
    count = 20 * 26  # one pixel per 2x2 block by default
    assert out.logits.shape == (2, 5, count) and out.target.shape == (2, count)
    # the decoder's logits at sampled points are its full map's at those pixels
    model.eval()
    with torch.no_grad():
        padded = [pad_to_multiple(t, 32) for t in (rgb, aux)]  # as forward pads them
        features, _ = model.forward_features(*padded, None)
        bands = torch.cat(padded, 1)
        torch.manual_seed(1)
        points = sample_points(2, 40, 52, 2, "cpu", row_length=64)
        sampled = model.decoder(features, (64, 64), bands, points)
        full = model.decoder(features, (64, 64), bands)
    at_points = full.flatten(2).gather(2, points[:, None].expand(-1, 5, -1))
    torch.testing.assert_close(sampled, at_points)
    # validation and prediction (no target, or eval) map every pixel
    assert model(rgb, aux).logits.shape == (2, 5, 40, 52)
    model.train()
    assert model(rgb, aux).logits.shape == (2, 5, 40, 52)
    every = build_model(
        tiny(num_classes=5, aux_channels=2, detail_path=True, detail_sample_block=1)
    )
    assert every.train()(rgb, aux, target).logits.shape == (2, 5, 40, 52)
    assert every(rgb, aux, target).target is None


def trained_looking(model):
    """``model`` with its detail path's classifier and gate drawn at random (as if
    trained)."""
    with torch.no_grad():
        for module in (model.decoder.detail.classifier, model.decoder.detail.gate):
            torch.nn.init.normal_(module.weight)
            torch.nn.init.normal_(module.bias)
    return model.eval()


@pytest.mark.parametrize("variant", ["gopt", "pixel"])
def test_keep_computes_the_per_pixel_part_in_the_boxes_only_and_the_same_there(variant):
    torch.manual_seed(0)
    if variant == "pixel":
        model = build_model(tiny(variant="pixel", aux_channels=3)).eval()
    else:
        model = trained_looking(build_model(tiny(aux_channels=3, detail_path=True)))
    g = torch.Generator().manual_seed(0)
    rgb, aux = torch.randn(2, 3, 40, 44, generator=g), torch.randn(2, 3, 40, 44, generator=g)
    keep = [(4, 6, 20, 30), (0, 0, 40, 44)]
    with torch.no_grad():
        full = model(rgb, aux).logits
        kept = model(rgb, aux, keep=keep).logits
    for j, (r, c, h, w) in enumerate(keep):
        torch.testing.assert_close(
            kept[j, :, r : r + h, c : c + w], full[j, :, r : r + h, c : c + w]
        )
    assert not torch.allclose(kept[0, :, :4], full[0, :, :4])  # outside: not computed


def test_a_prediction_with_margins_is_the_same_when_the_detail_path_skips_them(tmp_path):
    from conftest import SYNTH_ROUTING

    from gopt_geo.data.synthetic import make_scene
    from gopt_geo.inference import PredictOptions, Predictor

    scene = make_scene(tmp_path / "scene", "tile", size=(80, 72), seed=3)
    torch.manual_seed(0)
    config = tiny(num_classes=WHU_OPT_SAR_CLASSES.num_classes, aux_channels=3, detail_path=True)
    predictor = Predictor(
        trained_looking(build_model(config)), SYNTH_ROUTING, WHU_OPT_SAR_CLASSES, device="cpu"
    )
    options = PredictOptions(
        window=32, overlap=0.25, margin=8, probabilities=True, vector=None, progress=False
    )
    maps, given = {}, []
    forward = predictor.model.forward
    predictor.model.forward = lambda *a, **k: given.append("keep" in k) or forward(*a, **k)
    for takes_keep in (True, False):  # the margin skipped (the default), and computed
        predictor.model.takes_keep = takes_keep
        given.clear()
        out = predictor.predict(scene.optical, scene.sar, tmp_path / f"out{takes_keep}", options)
        assert given and set(given) == {takes_keep}
        with rasterio.open(out.class_map) as a, rasterio.open(out.probabilities) as p:
            maps[takes_keep] = (a.read(), p.read())
    assert np.array_equal(maps[True][0], maps[False][0])
    np.testing.assert_allclose(maps[True][1], maps[False][1], atol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (37, 45), (5, 130)])
def test_upsampling_at_points_is_interpolate_at_those_pixels(size):
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(2, 3, -(-size[0] // 4), -(-size[1] // 4), generator=g)
    full = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    points = torch.stack([torch.randperm(size[0] * size[1], generator=g)[:50] for _ in range(2)])
    at_points = full.flatten(2).gather(2, points[:, None].expand(-1, 3, -1))
    torch.testing.assert_close(upsample_at(coarse, size, points), at_points)


def test_an_adapter_written_before_the_gate_loads_and_predicts_as_it_was_trained(tmp_path):
    # the detail path summed the decoder's logits and the MLP's before it had a gate; a
    # zero gate is that sum, so such an adapter loads with one and maps as before
    torch.manual_seed(0)
    model = trained_looking(build_model(tiny(aux_channels=3, detail_path=True)))
    with torch.no_grad():
        model.decoder.detail.gate.weight.zero_()
        model.decoder.detail.gate.bias.zero_()
    gate = {"decoder.detail.gate.weight", "decoder.detail.gate.bias"}

    def without_gate(tensors):
        assert gate <= set(tensors)
        return {k: v for k, v in tensors.items() if k not in gate}

    path = older_adapter(tmp_path / "before_gate.safetensors", model, tensors=without_gate)
    loaded, _ = load_adapter(path)
    g = torch.Generator().manual_seed(0)
    rgb, aux = torch.randn(1, 3, 40, 40, generator=g), torch.randn(1, 3, 40, 40, generator=g)
    with torch.no_grad():
        assert torch.equal(loaded(rgb, aux).logits, model(rgb, aux).logits)
