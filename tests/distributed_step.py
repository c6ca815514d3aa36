"""One data-parallel SGD step through `entropy_probe.distributed`, for test_distributed.py.

Run as `python -m torch.distributed.run --nproc-per-node K tests/distributed_step.py OUT.npy`
or as a plain script (one process). Every run writes the weights after one step on the same
global batch, so the files of a K-process and a one-process run must agree.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from entropy_probe import distributed


def main(out: str) -> None:
    context = distributed.init_from_environment("cpu")
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    inputs = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    targets = torch.randn(12, 2, generator=generator, dtype=torch.float64)

    wrapped = distributed.wrap_model(model, context)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    mine_x, mine_y = distributed.shard(inputs, context), distributed.shard(targets, context)
    # DDP averages gradients over ranks, so each rank's loss is the mean over its equal share.
    loss = ((wrapped(mine_x) - mine_y) ** 2).mean()
    loss.backward()
    optimizer.step()
    mean_loss = distributed.all_reduce_mean(loss.detach())

    with distributed.main_process_only() as main_process:
        if main_process:
            weights = distributed.unwrap_model(wrapped).weight.detach().numpy()
            np.save(out, np.concatenate([weights.ravel(), [float(mean_loss), context.world_size]]))
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
