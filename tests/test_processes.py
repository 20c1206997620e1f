"""Sharded synthesis: the collectives of :class:`dfkd_guard.Processes`, alone and on two gloo processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dfkd_guard import Guard, GuardConfig, Processes, hookimpl
from dfkd_guard.adapters.deepinversion import DeepInversionConfig, DeepInversionSynthesizer
from dfkd_guard.bench.models import ConvNet
from dfkd_guard.bn_statistics import batchnorm_layers, bn_matching_loss
from dfkd_guard.distill.parallel import leave_together
from dfkd_guard.serialization import plain_digest


def test_rows_cut_a_batch_into_blocks_in_rank_order() -> None:
    blocks = [Processes(rank, 3).rows(7) for rank in range(3)]
    assert blocks == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert [Processes(rank, 2).rows(64) for rank in range(2)] == [slice(0, 32), slice(32, 64)]
    with pytest.raises(ValueError, match="rank 2, world 2"):
        Processes(2, 2)


def test_alone_every_collective_leaves_things_as_they_are() -> None:
    alone = Processes()
    batch = torch.randn(5, 3)
    assert alone.own(batch) is batch
    assert torch.equal(alone.gather(batch), batch)
    assert alone.sum(batch) is batch
    assert alone.all_true(torch.tensor(True)) and not alone.all_true(torch.tensor(False))
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    net(batch).sum().backward()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [p.grad.clone() for p in net.parameters()]
    alone.average_gradients(net.parameters())
    alone.average_buffers(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, net.parameters()))


class ScoredBatches:
    """Counts the images each scorer call received on this process."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    @hookimpl
    def dfkd_guard_batch_scored(self, scores: torch.Tensor) -> None:
        self.sizes.append(int(scores.shape[0]))


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    return ConvNet((4, 8, 8), in_channels=1).eval()


def _on_two_processes(rank: int, world: int, folder: str) -> None:
    store = dist.FileStore(f"{folder}/group", world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    torch.set_num_threads(1)
    processes = Processes.current()
    result: dict[str, object] = {}

    rows = torch.full((rank + 1, 2), float(rank))
    result["gathered"] = processes.gather(rows)[:, 0].tolist()
    result["all_true"] = processes.all_true(torch.tensor(rank == 0))

    teacher = _teacher()
    targets = [(layer.running_mean, layer.running_var) for layer in batchnorm_layers(teacher)]
    inputs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_pre_hook(lambda _, args: inputs.append(args[0]))
        for layer in batchnorm_layers(teacher)
    ]
    torch.manual_seed(1)
    batch = torch.randn(6, 1, 16, 16)  # drawn whole on every process
    whole = batch.clone().requires_grad_()
    teacher(whole)
    expected = bn_matching_loss(inputs, targets)
    expected.backward()
    inputs.clear()
    own = processes.own(batch).clone().requires_grad_()
    teacher(own)
    synced = bn_matching_loss(inputs, targets, processes)
    synced.backward()
    for hook in hooks:
        hook.remove()
    result["bn_loss"] = [float(synced), float(expected)]
    assert whole.grad is not None and own.grad is not None
    share = whole.grad[processes.rows(6)]
    result["bn_gradient_gap"] = float((own.grad - world * share).abs().max() / share.abs().max())

    torch.manual_seed(2)
    scored = ScoredBatches()
    guard = Guard(GuardConfig(), teacher, plugins=[scored], load_entrypoints=False)
    student = ConvNet((4, 8, 8), in_channels=1)
    config = DeepInversionConfig(batch_size=8, student_batch_size=8, iterations=3)
    synthesizer = DeepInversionSynthesizer(teacher, student, guard, config, (1, 16, 16), processes=processes)
    synthesizer.synthesize()
    synthesizer.synthesize()
    result["pool_size"] = len(synthesizer.pool)
    result["pool_digest"] = plain_digest(synthesizer.pool.state_dict())
    result["scored_sizes"] = scored.sizes
    result["random_state"] = plain_digest({"rng": torch.get_rng_state()})
    synthesizer.close()
    guard.close()
    Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
    # as dfkd_guard.distill.parallel.joined leaves: a process whose peer exits while it still tears gloo
    # down aborts ("terminate called without an active exception", about 1 run in 10)
    dist.barrier()
    dist.destroy_process_group()
    leave_together(store, rank, world)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    folder = tmp_path_factory.mktemp("processes")
    mp.spawn(_on_two_processes, args=(2, str(folder)), nprocs=2, join=True)
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_gather_concatenates_rows_of_any_count_in_rank_order(two_processes: list[dict]) -> None:
    assert [r["gathered"] for r in two_processes] == [[0.0, 1.0, 1.0]] * 2
    assert [r["all_true"] for r in two_processes] == [False, False]


def test_the_bn_loss_of_shards_is_that_of_the_whole_batch(two_processes: list[dict]) -> None:
    for result in two_processes:
        synced, whole = result["bn_loss"]
        assert synced == pytest.approx(whole, rel=1e-5)
        # every process's loss counts: its rows get world x their share; averaging over processes gives it back
        assert result["bn_gradient_gap"] < 1e-4


def test_deepinversion_shards_a_round_and_pools_the_same_images_everywhere(
    two_processes: list[dict],
) -> None:
    first, second = two_processes
    assert first["pool_size"] == second["pool_size"] == 16  # two rounds of 8, each process made 4 a round
    assert first["pool_digest"] == second["pool_digest"]
    assert first["random_state"] == second["random_state"]  # in lockstep: the next pool batch is the same
    assert first["scored_sizes"] == second["scored_sizes"] == [4, 4]  # each process scored its own rows
