"""The training step: no host synchronisation between logging iterations, and an exact skip of
non-finite steps (no parameter and no optimiser state changes)."""

from __future__ import annotations

import itertools

import pytest
import torch

import solov2.engine.train as train_module
from solov2.config import load_config
from solov2.data.synthetic import write_synthetic_coco
from solov2.device import setup_runtime
from solov2.engine.optim import apply_update, build_optimizer, init_state
from solov2.engine.train import TrainOptions, _Trainer

from .host_reads import HostReads


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_synthetic_coco(tmp_path_factory.mktemp("coco"), train=8, val=0, seed=5)


def _trainer(coco, tmp_path, *overrides: str) -> _Trainer:
    cfg = load_config(
        "solov2_tiny_cpu",
        ["data.workers=0", "train.log_interval=1000", "data.samples_per_device=2", *overrides],
    )
    opts = TrainOptions(data_path=coco, work_dir=tmp_path, device="cpu", evaluate=False, termination_log=None)
    trainer = _Trainer(cfg, opts, setup_runtime("cpu"), log=lambda _m: None)
    trainer.model.train()
    return trainer


def _batches(trainer: _Trainer, n: int) -> list:
    trainer.loader.set_epoch(0)
    return list(itertools.islice(itertools.cycle(list(trainer.loader)), n))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_steps_between_logging_never_read_a_value_back(coco, tmp_path, optimizer):
    # A pair buffer of 4 per image: positives are dropped, and counted on the device.
    trainer = _trainer(coco, tmp_path, f"train.optimizer={optimizer}", "model.targets.max_positives=4")
    batches = _batches(trainer, 3)
    before = [p.detach().clone() for p in trainer.params]
    dropped = []
    with HostReads() as mode:
        for batch in batches:
            dropped.append(trainer.step(batch)["dropped_positives"])
            trainer.iteration += 1
    assert mode.reads == []
    # The steps did train, and the counters saw them, once read.
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.params, strict=True))
    counts = trainer.counters.read()
    assert counts.nonfinite == 0
    assert counts.dropped_positives == int(sum(dropped)) > 0


def test_the_host_read_recorder_sees_every_kind_of_read():
    """What the test above relies on: each way of reading a value back is recorded."""
    t = torch.arange(4.0)
    reads = {
        "item": lambda: t[0].item(),
        "bool": lambda: bool(t[1]),
        "int": lambda: int(t[1]),
        "tolist": lambda: t.tolist(),
        "numpy": lambda: t.numpy(),
        "np.asarray": lambda: __import__("numpy").asarray(t),
    }
    for name, read in reads.items():
        with HostReads() as mode:
            read()
        assert mode.reads, f"{name} was not recorded"
    original = torch.Tensor.tolist
    with HostReads() as mode:
        (t * 2).sum()  # device work only
    assert mode.reads == [] and torch.Tensor.tolist is original  # put back on exit


def _snapshot(trainer: _Trainer) -> tuple[list[torch.Tensor], dict]:
    state = trainer.optimizer.state_dict()
    cloned = {
        k: {kk: vv.clone() if isinstance(vv, torch.Tensor) else vv for kk, vv in v.items()}
        for k, v in state["state"].items()
    }
    return [p.detach().clone() for p in trainer.params], cloned


@pytest.mark.parametrize(("optimizer", "warm_steps"), [("sgd", 0), ("sgd", 1), ("adamw", 0), ("adamw", 1)])
def test_a_skipped_step_changes_no_parameter_and_no_optimiser_state(
    coco, tmp_path, monkeypatch, optimizer, warm_steps
):
    trainer = _trainer(coco, tmp_path, f"train.optimizer={optimizer}")
    batches = _batches(trainer, warm_steps + 2)
    for batch in batches[:warm_steps]:
        trainer.step(batch)
        trainer.iteration += 1
    params, state = _snapshot(trainer)

    original = train_module.total_loss
    monkeypatch.setattr(train_module, "total_loss", lambda out: original(out) * float("nan"))
    trainer.step(batches[warm_steps])
    trainer.iteration += 1
    new_params, new_state = _snapshot(trainer)
    assert all(torch.equal(a, b) for a, b in zip(params, new_params, strict=True))
    assert state.keys() == new_state.keys()
    for key, entries in state.items():
        for name, value in entries.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(new_state[key][name])), (key, name)
    counts = trainer.counters.read()
    assert (counts.nonfinite, counts.current_run, counts.last_nonfinite) == (1, 1, warm_steps + 1)

    # The next finite step trains again, from the state the skipped step left alone.
    monkeypatch.setattr(train_module, "total_loss", original)
    trainer.step(batches[warm_steps + 1])
    assert all(torch.isfinite(p).all() for p in trainer.params)
    assert any(not torch.equal(a, p) for a, p in zip(params, trainer.params, strict=True))
    assert trainer.counters.read().current_run == 0


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("implementation", ["fused", "foreach"])
def test_apply_update_skips_exactly_with_either_implementation(optimizer, implementation):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    cfg = load_config("solov2_tiny_cpu", [f"train.optimizer={optimizer}"]).train
    opt = build_optimizer(model.parameters(), cfg, 0.1, implementation=implementation)
    init_state(opt)
    x = torch.randn(5, 4)

    def grads(scale: float) -> None:
        opt.zero_grad()
        (model(x).square().sum() * scale).backward()

    grads(1.0)
    apply_update(opt, torch.tensor(True))
    before = [p.detach().clone() for p in model.parameters()]
    state = {(i, k): v.clone() for i, p in enumerate(model.parameters()) for k, v in opt.state[p].items()}
    grads(float("inf"))
    apply_update(opt, torch.tensor(False))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    after = {(i, k): v.clone() for i, p in enumerate(model.parameters()) for k, v in opt.state[p].items()}
    assert all(torch.equal(state[k], after[k]) for k in state)
    grads(1.0)
    apply_update(opt, torch.tensor(True))
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_on_an_npu_a_fused_kernel_that_ignores_found_inf_still_skips_exactly(optimizer, monkeypatch):
    """torch_npu's fused AdamW applies an update whatever ``found_inf`` says (and its fused SGD reads it
    on the host): on an NPU the fused step runs without it and the restore path undoes a skipped one.
    Here the fused CPU kernels stand in, made to ignore ``found_inf`` as torch_npu's AdamW does."""
    from solov2.engine.optim import supports_found_inf

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    cfg = load_config("solov2_tiny_cpu", [f"train.optimizer={optimizer}"]).train
    opt = build_optimizer(model.parameters(), cfg, 0.1, implementation="fused")
    assert supports_found_inf(opt, "cpu") and not supports_found_inf(opt, "npu")
    init_state(opt)
    real_step = opt.step

    def step_ignoring_found_inf():
        assert getattr(opt, "found_inf", None) is None, "found_inf handed to an NPU kernel"
        return real_step()

    monkeypatch.setattr(opt, "step", step_ignoring_found_inf)
    x = torch.randn(5, 4)
    opt.zero_grad()
    model(x).square().sum().backward()
    apply_update(opt, torch.tensor(True), "npu")
    before = [p.detach().clone() for p in model.parameters()]
    state = {(i, k): v.clone() for i, p in enumerate(model.parameters()) for k, v in opt.state[p].items()}
    opt.zero_grad()
    (model(x).square().sum() * float("inf")).backward()
    apply_update(opt, torch.tensor(False), "npu")
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(
        torch.equal(v, opt.state[p][k]) for (i, k), v in state.items() for p in [list(model.parameters())[i]]
    )


def test_foreach_adamw_keeps_its_step_counts_on_the_accelerator():
    """Foreach AdamW counts steps in host tensors unless capturable: the restore of a skipped step (on the
    device) would not reach them, and the skipped step would still move the bias correction."""
    params = [torch.nn.Parameter(torch.ones(3))]
    cfg = load_config("solov2_tiny_cpu", ["train.optimizer=adamw"]).train
    for kind, capturable in (("cuda", True), ("npu", True), ("cpu", False)):
        opt = build_optimizer(params, cfg, 0.1, device_kind=kind, implementation="foreach")
        assert opt.param_groups[0]["capturable"] is capturable, kind
    sgd = build_optimizer(
        params,
        load_config("solov2_tiny_cpu", ["train.optimizer=sgd"]).train,
        0.1,
        device_kind="cuda",
        implementation="foreach",
    )
    assert not sgd.param_groups[0].get("capturable")


def test_npu_sgd_without_momentum_runs_foreach():
    """torch_npu's fused SGD refuses a momentum of 0; the NPU then gets torch's foreach SGD."""
    from solov2.engine.optim import describe_optimizer

    params = [torch.nn.Parameter(torch.ones(3))]
    lib = torch.library.Library("aten", "IMPL", "PrivateUse1")
    try:
        lib.impl("_fused_sgd_", lambda *args, **kwargs: None)
        with_momentum = build_optimizer(
            params, load_config("solov2_r50_fpn_1x_coco").train, 0.1, device_kind="npu"
        )
        cfg = load_config("solov2_r50_fpn_1x_coco", ["train.momentum=0"]).train
        without = build_optimizer(params, cfg, 0.1, device_kind="npu")
        on_cpu = build_optimizer(params, cfg, 0.1, device_kind="cpu")
    finally:
        lib._destroy()
    assert describe_optimizer(with_momentum) == "torch.optim.SGD (fused)"
    assert describe_optimizer(without) == "torch.optim.SGD (foreach)"
    assert describe_optimizer(on_cpu) == "torch.optim.SGD (fused)"
