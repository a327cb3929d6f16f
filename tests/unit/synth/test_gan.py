"""The defect GAN: network shapes and conditioning, augmentation, training steps, R1, ADA, resume, GAN_DIR
checks and the patch source. Tiny networks at 16 px on one thread: a few seconds in all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import yaml

from lineguard import LineguardError
from lineguard.checkpoint import torch_device
from lineguard.data.format import Dataset
from lineguard.sim import SimulatorConfig, simulate_dataset
from lineguard.synth.crops import defect_crops
from lineguard.synth.gan.augment import AdaptiveAugment
from lineguard.synth.gan.config import (
    GAN_YAML,
    WEIGHTS,
    AdaConfig,
    GanConfig,
    GanDirError,
    GanFile,
    cpu_preset,
    cpu_projected_preset,
    gpu_preset,
    preset_config,
)
from lineguard.synth.gan.networks import Discriminator, Generator, make_generator
from lineguard.synth.gan.source import GanSource
from lineguard.synth.gan.train import CHECKPOINT, GanTrainer, fit, load_training_data

CLASSES = ["dent", "scratch", "stain"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gan") / "sim"
    simulate_dataset(root, n=24, seed=0, cfg=SimulatorConfig(size=64), workers=1, progress=False)
    return root


def tiny(**kw) -> GanConfig:
    """16 px, 8-16 channels, batch 4; a tick per step; R1 every 2nd step; augmentation on from the start."""
    base = dict(resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16, batch_size=4,
                r1_interval=2, kimg=1.0, tick_kimg=0.004, snapshot_kimg=0.5, sample_kimg=0.5, ema_kimg=0.01,
                augment=AdaConfig(p_init=0.5), device="cpu")
    return GanConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def gan_dir(sim: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gan") / "g"
    fit(sim, out, tiny(), progress=False, max_steps=3)
    return out


# networks


@pytest.mark.parametrize("resolution", [16, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(resolution: int, channels: int) -> None:
    torch.manual_seed(0)
    G = Generator(resolution, channels, 3, z_dim=8, w_dim=8, mapping_layers=2, channel_base=256, channel_max=16)
    D = Discriminator(resolution, channels, 3, channel_base=256, channel_max=16)
    c = torch.tensor([0, 1, 2, 1])
    img, mask = G(torch.randn(4, 8), c)
    assert img.shape == (4, channels, resolution, resolution) and mask.shape == (4, 1, resolution, resolution)
    assert torch.isfinite(mask).all()  # linear (see the next test), on the 0/1 scale
    assert G.num_ws == 2 * int(np.log2(resolution)) - 2
    logits = D(img, mask, c)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    logits.sum().backward()  # gradients reach G through D
    assert all(p.grad is not None for p in G.parameters())


def test_mask_head_is_linear_so_sharp_masks_keep_their_gradient() -> None:
    """A mask pushed far towards 'defect' still moves with its head's bias at the same rate (0.5 per unit):
    a sigmoid head's gradient there vanishes (sigmoid'(20) ~ 2e-9), which froze the learned shapes."""
    torch.manual_seed(0)
    G = Generator(16, 1, 2, z_dim=8, w_dim=8, mapping_layers=1, channel_base=128, channel_max=16)
    with torch.no_grad():
        G.to_mask[-1].bias.fill_(20.0)
    _, mask = G(torch.randn(3, 8), torch.tensor([0, 1, 0]))
    assert mask.mean() > 5  # far past the 0/1 scale: not squashed
    (grad,) = torch.autograd.grad(mask.sum(), [G.to_mask[-1].bias])
    assert grad.item() == pytest.approx(0.5 * mask.numel())


def test_mapping_lr_multiplier_is_configured_and_older_gan_files_keep_stylegans() -> None:
    """The CPU preset moves the mapping network 10x faster than StyleGAN's 0.01; a config without the field
    (every gan.yaml written before it) rebuilds with 0.01, the scale its stored mapping weights were saved at."""
    assert cpu_preset().mapping_lr_mul == 0.1 and gpu_preset().mapping_lr_mul == 0.01
    G = make_generator(cpu_preset(), 2)
    assert {layer.lr_mul for layer in G.mapping} == {0.1}
    older = cpu_preset().model_dump()
    del older["mapping_lr_mul"]
    assert GanConfig.model_validate(older).mapping_lr_mul == 0.01
    assert gpu_preset().r1_gamma == pytest.approx(0.0002 * 128 ** 2 / 32)  # ADA's rule at 128 px, batch 32


def test_class_conditioning_and_truncation() -> None:
    torch.manual_seed(0)
    G = Generator(16, 1, 3, z_dim=8, w_dim=8, mapping_layers=2, channel_base=128, channel_max=16).eval()
    D = Discriminator(16, 1, 3, channel_base=128, channel_max=16)
    z = torch.randn(2, 8).repeat(2, 1)
    c = torch.tensor([0, 0, 1, 1])
    img, mask = G(z, c)
    assert not torch.allclose(img[:2], img[2:]) and not torch.allclose(mask[:2], mask[2:])
    assert not torch.allclose(D(img, mask, torch.zeros(4, dtype=torch.long)), D(img, mask, c))
    same, _ = G(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), truncation=0.0)  # every w = the class mean
    assert torch.allclose(same, same[:1].expand_as(same), atol=1e-6)


def test_style_mixing() -> None:
    torch.manual_seed(0)
    G = Generator(16, 1, 3, z_dim=8, w_dim=8, mapping_layers=2, channel_base=128, channel_max=16).eval()
    z, z2, c = torch.randn(3, 8), torch.randn(3, 8), torch.tensor([0, 1, 2])
    plain, mixed = G(z, c)[0], G(z, c, z_mix=z2, crossover=2)[0]
    assert mixed.shape == plain.shape
    assert not torch.allclose(mixed, plain) and not torch.allclose(mixed, G(z2, c)[0])
    assert torch.allclose(G(z, c, z_mix=z2, crossover=G.num_ws)[0], plain)  # crossover past the end: no mixing


# augmentation


@pytest.mark.parametrize("channels", [1, 3])
def test_augment_keeps_image_and_mask_aligned(channels: int) -> None:
    torch.manual_seed(0)
    img = torch.nn.functional.avg_pool2d(torch.randn(16, channels, 36, 36), 5, 1)  # smooth blobs, 32x32
    mask = (img[:, :1] > 0).float()
    aug = AdaptiveAugment(["flip", "translation", "cutout"], p=1.0)
    a_img, a_mask = aug(img, mask)
    assert not torch.equal(a_img, img)
    assert torch.equal((a_img[:, :1] > 0).float(), a_mask)
    c_img, c_mask = AdaptiveAugment(["color"], p=1.0)(img, mask)  # colour: the image only
    assert torch.equal(c_mask, mask) and not torch.equal(c_img, img)


def test_flip_keeps_orientation_and_rot90_turns() -> None:
    """Defect classes are oriented (most real Cracks near-vertical): x-flip keeps a horizontal bar horizontal,
    quarter turns are their own op, off by default."""
    torch.manual_seed(0)
    bar = torch.zeros(64, 1, 16, 16)
    bar[:, :, 7:9, 2:14] = 1.0  # horizontal

    def horizontal(m: torch.Tensor) -> bool:  # wider than tall
        return bool((m[0].sum(0) > 0).sum() > (m[0].sum(1) > 0).sum())

    flipped, _ = AdaptiveAugment(["flip"], p=1.0)(bar, bar[:, :1])
    assert all(horizontal(m) for m in flipped)
    turned, _ = AdaptiveAugment(["rot90"], p=1.0)(bar, bar[:, :1])
    assert 10 < sum(not horizontal(m) for m in turned) < 54  # about half the turns are odd
    assert "rot90" not in AdaConfig().ops


def test_adaptive_p_follows_overfitting() -> None:
    aug = AdaptiveAugment(["flip"], p=0.5, target=0.6, speed_kimg=1.0, interval=2)
    confident = torch.full((8,), 3.0)  # D sure of every real: r_t = 1 > 0.6
    aug.update(confident)
    assert aug.p == 0.5  # moves only every `interval` updates
    aug.update(confident)
    assert aug.rt == 1.0 and aug.p == pytest.approx(0.5 + 16 / 1000)
    for _ in range(4):
        aug.update(torch.tensor([1.0, -1.0, -2.0, 1.0]))  # r_t = 0 < 0.6
    assert aug.rt == 0.0 and aug.p == pytest.approx(0.5 + 16 / 1000 - 2 * 8 / 1000)
    capped = AdaptiveAugment(["flip"], p=0.7, speed_kimg=0.01, interval=1, p_max=0.8)
    for _ in range(3):
        capped.update(confident)
    assert capped.p == 0.8  # a noisy r_t cannot drive p to 1
    assert AdaConfig().p_max == 0.8
    fixed = AdaptiveAugment(["flip"], p=1.0, adaptive=False, interval=1)
    fixed.update(confident)
    assert fixed.p == 1.0
    state = aug.state_dict()
    again = AdaptiveAugment(["flip"])
    again.load_state_dict(state)
    assert again.state_dict() == state


# training


def test_training_steps_and_lazy_r1(sim: Path) -> None:
    cfg = tiny(r1_interval=3)
    data = load_training_data(sim, cfg)
    assert data.classes == CLASSES and data.label_names == CLASSES
    assert data.images.shape[1:] == (1, 16, 16) and set(data.masks.unique().tolist()) == {0.0, 1.0}
    trainer = GanTrainer(cfg, data)
    rows = [trainer.step() for _ in range(6)]
    assert all(np.isfinite([r["loss_d"], r["loss_g"]]).all() for r in rows)
    assert [r["r1"] > 0 for r in rows] == [True, False, False, True, False, False]
    assert trainer.nimg == 6 * cfg.batch_size


def test_crop_views_jitter_scale_and_position_and_keep_the_defect_whole(sim: Path) -> None:
    """views=3: each part's centred crop (the views=1 crop) and two squares up to 50% larger, shifted, still
    holding the whole part; drawn from the seed."""
    ds = Dataset.load(sim)
    one, _ = defect_crops(ds, ds.records, size=32)
    three, _ = defect_crops(ds, ds.records, size=32, views=3, jitter=0.5, seed=1)
    assert len(three) == 3 * len(one) and one
    for i, base in enumerate(one):
        centred, *jittered = three[3 * i:3 * i + 3]
        assert centred.box == base.box and np.array_equal(centred.mask, base.mask)
        side = base.box[2] - base.box[0]
        for view in jittered:
            vx0, vy0, vx1, vy1 = view.box
            assert side <= vx1 - vx0 <= round(1.5 * side) + 1 and vx1 - vx0 == vy1 - vy0
            assert view.mask.any()
        assert len({view.box for view in jittered} | {base.box}) == 3
    again, _ = defect_crops(ds, ds.records, size=32, views=3, jitter=0.5, seed=1)
    assert [c.box for c in again] == [c.box for c in three]
    assert [c.box for c in defect_crops(ds, ds.records, size=32, views=3, seed=2)[0]] != [c.box for c in three]


@pytest.fixture(scope="module")
def surface_dir(sim: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gan") / "surface"
    fit(sim, out, tiny(target="surface"), progress=False, max_steps=2)
    return out


def test_surface_fit_learns_ok_patches_and_is_no_defect_source(sim: Path, surface_dir: Path) -> None:
    data = load_training_data(sim, tiny(target="surface"))
    n_ok = sum(r.label == "ok" for r in Dataset.load(sim).records)
    assert data.classes == [] and data.label_names == ["ok"] and len(data.images) == 4 * n_ok > 0
    assert data.masks.abs().sum() == 0 and set(data.labels.tolist()) == {0}
    meta = GanFile.load(surface_dir / GAN_YAML)
    assert meta.classes == [] and meta.labels == ["ok"] and meta.config.target == "surface" and meta.surface is None
    assert meta.data["ok_patches"] == len(data.images)
    rows = [json.loads(line) for line in (surface_dir / "shapes.jsonl").read_text().splitlines()]
    assert rows and all(r["shapes"] == {} for r in rows)  # no masks to compare
    texture = [json.loads(line) for line in (surface_dir / "texture.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in texture] == [r["kimg"] for r in rows]  # a row with every sample grid
    last = texture[-1]["texture"]
    assert last["real"] == len(data.images) and last["fake"] == 64 and len(last["log2_ratio"]) == 5
    assert last["hf_ratio"] > 0 and set(last["noise_strength"]) == {"4", "8", "16"}  # tiny(): 16 px
    with pytest.raises(GanDirError, match=r"a surface GAN \(stage 1.*--surface"):
        GanSource.load(surface_dir)
    with pytest.raises(ValueError, match="target surface is stage 1"):
        tiny(target="surface", surface=str(surface_dir))


def test_stage_two_trains_defect_blocks_on_a_frozen_surface(sim: Path, surface_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    surface = load_file(str(surface_dir / WEIGHTS))
    out = tmp_path / "g2"
    rep = fit(sim, out, tiny(surface=str(surface_dir)), progress=False, max_steps=3)
    assert rep["classes"] == CLASSES and rep["steps"] == 3
    weights = load_file(str(out / WEIGHTS))
    stage1 = {k[len("surface."):]: v for k, v in weights.items() if k.startswith("surface.")}
    assert stage1.keys() == surface.keys()
    assert all(torch.equal(stage1[k], surface[k]) for k in surface)  # bit-identical after training
    ck = torch.load(out / CHECKPOINT, weights_only=True)
    for name in ("G", "G_ema"):
        assert all(torch.equal(ck[name][f"surface.{k}"], v) for k, v in surface.items())
    meta = GanFile.load(out / GAN_YAML)
    assert meta.surface is not None and meta.surface.sha256 == GanFile.load(surface_dir / GAN_YAML).sha256
    texture = json.loads((out / "texture.jsonl").read_text().splitlines()[-1])["texture"]
    surface_texture = json.loads((surface_dir / "texture.jsonl").read_text().splitlines()[-1])["texture"]
    assert texture["noise_strength"] == surface_texture["noise_strength"]  # the frozen surface's noise inputs
    # the GAN_DIR is self-contained: it generates with the surface folder gone
    moved = tmp_path / "moved"
    shutil.copytree(surface_dir, moved)
    shutil.rmtree(surface_dir)
    try:
        src = GanSource.load(out)
        assert all(p.mask.any() for p in src.sample("scratch", 4, np.random.default_rng(0)))
    finally:
        shutil.copytree(moved, surface_dir)
    # a defect sample differs from its OK sample (the surface alone, same z and noise) only inside its mask
    G = src.G
    z = torch.randn(8, G.z_dim, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with torch.no_grad():
        img, mask = G(z, c, noise_gen=torch.Generator().manual_seed(1))
        ok, _ = G.surface(z[:, :G.surface.z_dim], torch.zeros_like(c), noise_gen=torch.Generator().manual_seed(1))
    changed = (img != ok)[:, 0]
    assert changed.any() and not (changed & (mask[:, 0] <= 0)).any()
    # the defect blocks have noise inputs of their own (drawn after the surface's, which stays as above)
    assert all(float(m.noise_strength) != 0 for m in (G.enter, *G.ups, *G.convs))
    with torch.no_grad():
        for m in (G.enter, *G.ups, *G.convs):
            m.noise_strength.zero_()
        quiet, _ = G(z, c, noise_gen=torch.Generator().manual_seed(1))
    assert not torch.equal(quiet, img)  # they changed the samples


def test_stage_two_refuses_what_is_not_its_surface(sim: Path, surface_dir: Path, gan_dir: Path, tmp_path: Path
                                                   ) -> None:
    with pytest.raises(LineguardError, match=r"not a surface GAN \(it makes \['dent'"):
        fit(sim, tmp_path / "a", tiny(surface=str(gan_dir)), progress=False, max_steps=1)
    with pytest.raises(LineguardError, match=r"a surface of 16 px and 1 channel.*this fit is 32 px"):
        fit(sim, tmp_path / "b", tiny(surface=str(surface_dir), resolution=32), progress=False, max_steps=1)
    out = tmp_path / "c"
    fit(sim, out, tiny(surface=str(surface_dir)), progress=False, max_steps=1)
    other = tmp_path / "other-surface"
    fit(sim, other, tiny(target="surface", seed=1), progress=False, max_steps=1)
    with pytest.raises(LineguardError, match="started on the surface with weights"):
        fit(sim, out, tiny(surface=str(other)), resume=True, progress=False, max_steps=2)
    fit(sim, out, tiny(surface=str(surface_dir)), resume=True, progress=False, max_steps=2)
    with pytest.raises(ValueError, match="pretrain_ok_kimg is replaced by the two-stage fit"):
        GanConfig(pretrain_ok_kimg=500)
    assert GanConfig.model_validate({"pretrain_ok_kimg": 0.0}) == GanConfig()  # older files: 0 meant nothing


def test_resume_continues_like_an_uninterrupted_run(sim: Path, tmp_path: Path) -> None:
    cfg = tiny()
    fit(sim, tmp_path / "a", cfg, progress=False, max_steps=4)
    fit(sim, tmp_path / "b", cfg, progress=False, max_steps=2)
    ck = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert ck["step"] == 2 and ck["version"] == 1 and ck["config"]["resolution"] == 16
    with pytest.raises(LineguardError, match="--resume"):
        fit(sim, tmp_path / "b", cfg, progress=False, max_steps=4)
    assert ck["surface"] is None
    del ck["surface"]  # as a checkpoint of before the two stages: it resumes all the same
    torch.save(ck, tmp_path / "b" / CHECKPOINT)
    fit(sim, tmp_path / "b", cfg, resume=True, progress=False, max_steps=4)
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in "ab"]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    losses = [[(r["loss_d"], r["loss_g"], r["r1"], r["p"]) for r in log] for log in logs]
    assert losses[0] == losses[1]
    assert (tmp_path / "a" / WEIGHTS).read_bytes() == (tmp_path / "b" / WEIGHTS).read_bytes()
    with pytest.raises(LineguardError, match=r"checkpoint.pt.*architecture.*channel_max"):
        fit(sim, tmp_path / "b", tiny(channel_max=8), resume=True, progress=False, max_steps=5)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_resume_from_a_damaged_checkpoint_is_one_clear_error(sim: Path, tmp_path: Path, damage: str) -> None:
    out = tmp_path / "g"
    fit(sim, out, tiny(), progress=False, max_steps=1)
    ck = out / CHECKPOINT
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint at all")
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(LineguardError, match=r"checkpoint.pt: unreadable checkpoint"):
        fit(sim, out, tiny(), resume=True, progress=False, max_steps=2)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept


def test_class_without_crops_is_named(sim: Path, tmp_path: Path) -> None:
    root = tmp_path / "nomask"
    shutil.copytree(sim, root)
    ds = Dataset.load(root)
    for r in ds.records:
        if r.label == "stain":
            r.mask = None
    ds.save()
    with pytest.raises(LineguardError, match=r"class 'stain' has no usable defect crop.*no mask and no boxes"):
        load_training_data(root, tiny())


def test_gan_dir_outputs(gan_dir: Path) -> None:
    meta = yaml.safe_load((gan_dir / GAN_YAML).read_text())
    assert meta["classes"] == CLASSES and meta["resolution"] == 16 and meta["channels"] == 1
    assert meta["data"]["crops"] == {"dent": 4, "scratch": 7, "stain": 3}
    assert (gan_dir / "samples" / "reals.png").is_file() and (gan_dir / "samples" / "kimg000000.png").is_file()
    assert (gan_dir / "fit.yaml").is_file() and len((gan_dir / "log.jsonl").read_text().splitlines()) == 3
    rows = [json.loads(line) for line in (gan_dir / "shapes.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["kimg"] == meta["kimg"]
    assert set(rows[-1]["shapes"]) <= set(CLASSES)  # a class whose untrained masks are all empty is left out
    for c, figures in rows[-1]["shapes"].items():
        assert 0 <= figures["orientation_tv"] <= 1 and figures["real"] == meta["data"]["crops"][c]
    texture = json.loads((gan_dir / "texture.jsonl").read_text().splitlines()[-1])
    assert texture["kimg"] == meta["kimg"] and texture["texture"]["fake"] == 64 * len(CLASSES)
    assert texture["texture"]["real"] == sum(meta["data"]["crops"].values()) * meta["config"]["crop_views"]


# the patch source


def test_gan_dir_of_another_version_or_incomplete_is_refused(gan_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(gan_dir, other)
    meta = yaml.safe_load((other / GAN_YAML).read_text())
    (other / GAN_YAML).write_text(yaml.safe_dump({**meta, "version": 99}))
    with pytest.raises(LineguardError, match=r"gan.yaml: format \('lineguard-gan', 99\).*lineguard synth fit"):
        GanSource.load(other)
    (other / GAN_YAML).write_text(yaml.safe_dump(meta))
    (other / WEIGHTS).unlink()
    with pytest.raises(LineguardError, match=r"generator.safetensors: missing"):
        GanSource.load(other)
    with pytest.raises(LineguardError, match=r"gan.yaml: missing"):
        GanSource.load(tmp_path)


def test_gan_yaml_is_typed_and_a_bad_one_is_one_line(gan_dir: Path, tmp_path: Path) -> None:
    info = GanFile.load(gan_dir / GAN_YAML)
    assert info.classes == CLASSES and info.config == tiny() and info.weights == WEIGHTS and len(info.sha256) == 64
    other = tmp_path / "other"
    shutil.copytree(gan_dir, other)
    meta = yaml.safe_load((other / GAN_YAML).read_text())
    del meta["labels"]
    (other / GAN_YAML).write_text(yaml.safe_dump({**meta, "resolution": "big"}))
    with pytest.raises(GanDirError) as e:
        GanSource.load(other)
    assert "\n" not in str(e.value) and str(other / GAN_YAML) in str(e.value)
    assert "'labels': Field required" in str(e.value) and "'resolution'" in str(e.value)
    (other / GAN_YAML).write_text("[1, 2")
    with pytest.raises(GanDirError, match=r"gan.yaml: not valid YAML.*lineguard synth fit"):
        GanSource.load(other)
    (other / GAN_YAML).write_text("- 1\n")
    with pytest.raises(GanDirError, match=r"gan.yaml: must be a mapping of keys, got list"):
        GanSource.load(other)


def test_device_is_a_torch_device_string(gan_dir: Path) -> None:
    assert torch_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "meta"):
        with pytest.raises(LineguardError, match=f"device '{bad}': not one of cpu; cuda, cuda:N"):
            torch_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(LineguardError, match="device 'cuda:1': torch sees no CUDA device here"):
            GanSource.load(gan_dir, device="cuda:1")
    else:
        with pytest.raises(LineguardError, match="CUDA device"):
            torch_device(f"cuda:{torch.cuda.device_count()}")
    src = GanSource.load(gan_dir, device="cpu")
    assert src.device == torch.device("cpu") and len(src.version) == 16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_source_on_cuda_is_deterministic_and_named(gan_dir: Path) -> None:
    src = GanSource.load(gan_dir, device="cuda:0")
    cpu = GanSource.load(gan_dir)
    assert src.version == cpu.version + "-cuda" and next(src.G.parameters()).is_cuda
    with torch.no_grad():
        src.G.to_mask[-1].bias.fill_(2.0)
    a = src.sample("dent", 5, np.random.default_rng(1))
    b = src.sample("dent", 5, np.random.default_rng(1))
    assert len(a) == 5 and all(np.array_equal(p.image, q.image) and np.array_equal(p.mask, q.mask)
                               for p, q in zip(a, b))


def test_source_samples_patches_deterministically(gan_dir: Path) -> None:
    src = GanSource.load(gan_dir, truncation=0.9)
    assert src.classes == CLASSES and src.method == "stylegan" and len(src.version) == 16
    with torch.no_grad():
        src.G.to_mask[-1].bias.fill_(2.0)  # an untrained mask is noise: make its masks non-empty
    patches = src.sample("scratch", 70, np.random.default_rng(5))  # more than one batch
    assert len(patches) == 70
    for p in patches:
        assert p.image.shape == (16, 16) and p.image.dtype == np.uint8 and p.label == "scratch"
        assert p.mask.dtype == np.uint8 and set(np.unique(p.mask)) <= {0, 255} and p.mask.any()
    again = src.sample("scratch", 70, np.random.default_rng(5))
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) for a, b in zip(patches, again))
    assert not np.array_equal(src.sample("scratch", 1, np.random.default_rng(6))[0].image, patches[0].image)
    with torch.no_grad():
        src.G.to_mask[-1].bias.fill_(-50.0)  # masks always empty: redrawn, then dropped
    assert src.sample("dent", 3, np.random.default_rng(0)) == []
    with pytest.raises(LineguardError, match="not 'ok'"):
        src.sample("ok", 1, np.random.default_rng(0))


def test_preset_config_layers_the_preset_the_file_and_the_flags(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("kimg: 5\naugment:\n  p_max: 0.5\n")
    cfg = preset_config("cpu-projected", tmp_path / "g.yaml", kimg=7, device=None)
    assert cfg.discriminator == "projected" and cfg.kimg == 7 and cfg.device == GanConfig().device
    assert cfg.augment.p_max == 0.5 and cfg.augment.ops == cpu_projected_preset().augment.ops  # merged key by key
    assert preset_config() == GanConfig() and preset_config("gpu") == gpu_preset()
    (tmp_path / "bad.yaml").write_text("kimg: -1\n")
    with pytest.raises(LineguardError, match=r"bad\.yaml: .*kimg"):
        preset_config("cpu", tmp_path / "bad.yaml")


def test_presets_are_valid() -> None:
    cpu, gpu, projected = cpu_preset(), gpu_preset(), cpu_projected_preset()
    assert cpu.resolution == 64 and gpu.resolution == 128 and gpu.r1_gamma == pytest.approx(0.0002 * 128 ** 2 / 32)
    assert projected.discriminator == "projected" and projected.r1_gamma == 0 and projected.augment.p_init == 1.0
    assert not projected.augment.adaptive and projected.model_dump(exclude={"discriminator", "r1_gamma", "augment"}) \
        == cpu.model_dump(exclude={"discriminator", "r1_gamma", "augment"})
    assert cpu.channel_base // 64 <= 32 and cpu.channel_max <= 128 and 16 <= cpu.batch_size <= 32
    with pytest.raises(ValueError, match="power of 2"):
        GanConfig(resolution=48)


# the projected discriminator


def test_projected_discriminator_is_frozen_lite0_with_trainable_heads(sim: Path, tmp_path: Path) -> None:
    from lineguard.synth.gan.projected import ProjectedDiscriminator

    torch.manual_seed(0)
    D = ProjectedDiscriminator(32, 1, 3, width=8)
    assert "imagenet-lite0" in D.report.source and D.report.adapted  # the gray stem from the RGB weights
    assert len(D.heads) == 2  # strides 4 and 8 at 32 px (the stride-16 map would be 2 x 2)
    frozen = {k: v.clone() for k, v in D.features.state_dict().items()}
    heads = {k: v.clone() for k, v in D.heads.state_dict().items()}
    img = torch.randn(4, 1, 32, 32, requires_grad=True)
    mask = (torch.rand(4, 1, 32, 32) > 0.5).float().requires_grad_(True)
    c = torch.tensor([0, 1, 2, 0])
    D.requires_grad_(True).train()
    opt = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=0.01)
    logits = D(img, mask, c)
    assert logits.shape == (4,)
    logits.sum().backward()
    opt.step()
    assert img.grad.abs().sum() > 0 and mask.grad.abs().sum() > 0  # G learns through the frozen features
    assert all(torch.equal(v, D.features.state_dict()[k]) for k, v in frozen.items())  # BN statistics too
    assert any(not torch.equal(v, D.heads.state_dict()[k]) for k, v in heads.items())
    assert not D.features.training and all(not p.requires_grad for p in D.features.parameters())
    # the class projection: the same image and mask judged as another class scores differently
    with torch.no_grad():
        assert not torch.allclose(D(img, mask, c), D(img, mask, (c + 1) % 3))
    # weights from a file (--weights PATH), and a file that is not one
    from safetensors.torch import save_file

    from lineguard.weights import WeightsError

    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in D.features.state_dict().items()}, str(path))
    again = ProjectedDiscriminator(32, 1, 3, weights=str(path), width=8)
    assert again.report.source == str(path) and not again.report.missing
    assert all(torch.equal(v, again.features.state_dict()[k]) for k, v in D.features.state_dict().items())
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    with pytest.raises(WeightsError, match=r"bad.safetensors: not a readable safetensors file"):
        ProjectedDiscriminator(32, 1, 3, weights=str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="projected discriminator needs resolution 32 or more"):
        tiny(discriminator="projected")


def test_fit_with_the_projected_discriminator_and_the_two_stages(sim: Path, tmp_path: Path) -> None:
    cfg = dict(resolution=32, discriminator="projected", projected_width=8, r1_gamma=0.0)
    fit(sim, tmp_path / "s", tiny(target="surface", **cfg), progress=False, max_steps=1)
    rep = fit(sim, tmp_path / "g", tiny(surface=str(tmp_path / "s"), **cfg), progress=False, max_steps=2)
    assert rep["steps"] == 2 and rep["classes"] == CLASSES
    src = GanSource.load(tmp_path / "g")
    assert src.resolution == 32 and src.sample("dent", 2, np.random.default_rng(0)) is not None
    with pytest.raises(LineguardError, match=r"checkpoint.pt.*architecture.*discriminator"):
        fit(sim, tmp_path / "g", tiny(surface=str(tmp_path / "s"), **{**cfg, "discriminator": "pixel"}),
            resume=True, progress=False, max_steps=3)


def test_shape_prior_adds_warped_real_crops_and_shapes_compare_with_the_real_ones(sim: Path) -> None:
    from lineguard.synth.crops import shape_views

    plain = load_training_data(sim, tiny())
    data = load_training_data(sim, tiny(shape_views=3))
    n = len(plain.images)
    assert not plain.prior.any() and data.provenance["crops"] == plain.provenance["crops"]
    assert len(data.images) == n + int(data.prior.sum()) and 0.8 * 3 * n <= int(data.prior.sum()) <= 3 * n
    assert sum(data.provenance["shape_prior"].values()) == int(data.prior.sum())
    assert torch.equal(data.images[~data.prior], plain.images) and torch.equal(data.masks[~data.prior], plain.masks)
    copies = data.masks[data.prior]
    assert copies.flatten(1).amax(1).min() == 1 and set(copies.unique().tolist()) == {0.0, 1.0}
    # a vertical bar stays a bar, turned by at most the rotation (and flipped)
    ds = Dataset.load(sim)
    crops, _ = defect_crops(ds, ds.records, size=32)
    bar = crops[0]
    bar.mask[:] = 0
    bar.mask[4:28, 15:17] = 255
    for v in shape_views([bar], 20, rotate=15.0, elastic_p=0.0, seed=0):
        ys, xs = np.nonzero(v.mask)
        angle = np.degrees(np.arctan2(np.ptp(xs), np.ptp(ys)))
        assert angle < 25 and v.label == bar.label and v.image.shape == bar.image.shape
    assert [v.mask.tobytes() for v in shape_views([bar], 4, seed=1)] == \
        [v.mask.tobytes() for v in shape_views([bar], 4, seed=1)]
    # shapes.jsonl compares the generated masks with the real crops, not with the prior's copies
    trainer = GanTrainer(tiny(shape_views=3), data)
    from lineguard.synth.gan.train import _shapes

    report = _shapes(trainer.G_ema, data, tiny(), trainer.device)
    assert all(v["real"] == plain.provenance["crops"][c] for c, v in report.items())
