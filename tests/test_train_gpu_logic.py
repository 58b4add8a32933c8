"""The GPU path's logic, checked on a CPU: non-finite steps skipped before the optimizer steps
(and K in a row stop the run), the EMA and ZeRO masters started from fp32 weights, the optimizer
state saved sharded and resumed exactly. LowLevelZero needs CUDA, so its pieces are driven
through small stand-ins of the ColossalAI 0.5.0 objects they read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.test_train_guards import launch_here, one_set, video  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(300)


class NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def faulty_diffusion(monkeypatch, fault_at) -> None:
    """`fault_at(N)` for training_losses call N (1-based): "loss" (a NaN loss), "grad" (NaN gradients) or None."""
    import training.trainer as trainer

    calls = []

    class Faulty(trainer.IDDPM):
        def training_losses(self, *args, **kwargs):
            terms = super().training_losses(*args, **kwargs)
            calls.append(1)
            kind = fault_at(len(calls))
            if kind == "loss":
                terms["loss"] = terms["loss"] * float("nan")
            elif kind == "grad":
                terms["loss"] = NanGrad.apply(terms["loss"])
            return terms

    monkeypatch.setattr(trainer, "IDDPM", Faulty)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_a_nonfinite_step_is_skipped_and_the_run_goes_on(tmp_path, video, monkeypatch, kind):  # noqa: F811
    ws = one_set(tmp_path / "ws", video)
    faulty_diffusion(monkeypatch, lambda n: kind if n == 3 else None)
    run_dir = launch_here(ws, tmp_path / "run", ["train.max_steps=4", "optim.grad_clip=1.0"])
    m = metrics(run_dir)
    assert [r["step"] for r in m] == [1, 2, 3, 4], "the skipped attempt is not a step"
    assert [r["nonfinite_steps"] for r in m] == [0, 0, 1, 1]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() for r in m)
    text = (run_dir / "train.log").read_text()
    what = "loss (nan)" if kind == "loss" else "gradient norm (nan)"
    assert f"non-finite {what} at step 3: step skipped (1 in a row" in text
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values()), "nothing non-finite was applied"


def test_k_nonfinite_steps_in_a_row_stop_with_the_last_good_checkpoint(tmp_path, video, monkeypatch):  # noqa: F811
    from training.errors import RunError

    ws = one_set(tmp_path / "ws", video)
    faulty_diffusion(monkeypatch, lambda n: "grad" if n > 2 else None)
    run_dir = tmp_path / "run"
    with pytest.raises(RunError, match=r"at step 3: stopping after 2 non-finite step\(s\) in a row") as err:
        launch_here(ws, run_dir, ["train.max_steps=10", "train.ckpt_every=1", "train.max_nonfinite=2"])
    assert "step-00000002" in str(err.value)
    assert (run_dir / "checkpoints" / "latest").resolve().name == "step-00000002"
    assert [r["step"] for r in metrics(run_dir)] == [1, 2]


# ------------------------------------------------------------------------------------ ZeRO pieces
class Store:
    def __init__(self, grads):
        self.grads = grads

    def get_working_grads_by_group_id(self, group):
        return self.grads[group]


class ZeroLike:
    """What WeightView and grads_finite read of a 0.5.0 LowLevelZeroOptimizer (one rank)."""

    def __init__(self, module, grads):
        self.masters = {id(p): p.detach().to(torch.bfloat16).float() for p in module.parameters()}  # as 0.5.0
        self.pg_to_grad_store = {None: Store(grads)}
        self.num_param_groups = len(grads)

    def get_working_to_master_map(self):
        return self.masters

    def get_param_padding_size(self, param):
        return 0


@pytest.fixture()
def one_rank_group():
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_zero_nonfinite_check_reads_the_reduced_slices_before_step():
    from training.weights import grads_finite

    good = [[torch.ones(3), torch.zeros(2, dtype=torch.bfloat16)], [torch.ones(1)]]
    assert grads_finite(ZeroLike(torch.nn.Linear(2, 2), good))
    bad = [[torch.ones(3)], [torch.tensor([1.0, float("inf")])]]
    assert not grads_finite(ZeroLike(torch.nn.Linear(2, 2), bad))
    assert grads_finite(ZeroLike(torch.nn.Linear(2, 2), [[]]))


def test_ema_and_zero_masters_start_from_the_fp32_weights(one_rank_group):
    from training.weights import WeightView, fp32_snapshot, start_from

    torch.manual_seed(0)
    module = torch.nn.Linear(64, 64)
    fp32 = fp32_snapshot(module)
    optimizer = ZeroLike(module, [[]])
    view = WeightView(module, optimizer, zero=True)
    rounded = view.shards()["weight"].clone()
    assert not torch.equal(rounded, fp32["weight"]), "0.5.0's masters are bf16-rounded"
    ema = start_from(view, fp32)
    assert torch.equal(ema.shadow["weight"], fp32["weight"]) and ema.shadow["weight"].dtype == torch.float32
    assert torch.equal(view.shards()["weight"], fp32["weight"]), "the masters are the fp32 weights too"


# ------------------------------------------------------------------------------------ sharded optimizer
def test_optimizer_state_is_saved_sharded_and_resumes_exactly(tmp_path, video):  # noqa: F811
    ws = one_set(tmp_path / "ws", video)
    whole = launch_here(ws, tmp_path / "whole", ["train.max_steps=4", "train.ckpt_every=2"])
    ckpt = whole / "checkpoints" / "latest"
    folder = ckpt / "optimizer"
    index = json.loads(next(folder.glob("*.index.json")).read_text())
    shards = sorted({name for name in index["weight_map"].values()})
    assert len(shards) >= 1 and all((folder / name).is_file() for name in shards)
    assert not (ckpt / "optimizer.bin").exists()

    split = tmp_path / "split"
    launch_here(ws, split, ["train.max_steps=2", "train.ckpt_every=2"])
    launch_here(ws, split, ["train.max_steps=4", "train.ckpt_every=2"], resume=True)
    for key in ("loss", "grad_norm", "lr"):
        assert [r[key] for r in metrics(split)] == [r[key] for r in metrics(whole)], key


def test_hybrid_adam_unavailable_is_one_line_naming_nvcc_and_ninja(monkeypatch):
    from training.trainer import hybrid_adam_unavailable

    monkeypatch.setenv("PATH", "/nonexistent")
    message = hybrid_adam_unavailable(AssertionError("No usable kernel found for CPUAdamLoader\nmore detail"))
    assert (
        "\n" not in message and "nvcc NOT found, ninja NOT found" in message and "optim.name=adamw" in message
    )
    assert "No usable kernel found for CPUAdamLoader" in message
