"""Training throughput of `entropy-probe train` against a plain diffusers UNet2DModel loop.

Both loops train the same UNet2DModel architecture (the trainer's U-Net for the given channels)
on the same MNIST batches with Adam. The plain loop is the textbook ε-prediction step:
x_t = α x_0 + σ ε with α, σ of the vp process in float32 torch code, MSE against ε. The
trainer's step is the one `entropy-probe train` runs (entropy-matching loss, float64
coefficients, reproducible generators). The script times S steps of each, alternating, and
prints items per second and their ratio.

    python bench/trainer_throughput.py --channels 32,64,64 --batch-size 32 --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import benchlib
from entropy_probe.train import TrainSettings
from entropy_probe.train.loop import Trainer
from entropy_probe.train.networks import build_core, count_parameters


def plain_step(unet, optimizer, x0: torch.Tensor, generator: torch.Generator, beta_min: float = 0.1, beta_max: float = 16.0) -> torch.Tensor:
    t = 1e-5 + (1 - 1e-5) * torch.rand(x0.shape[0], generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    integral = beta_min * t + 0.5 * (beta_max - beta_min) * t * t
    alpha = torch.exp(-0.5 * integral).reshape(-1, 1, 1, 1)
    sigma = torch.sqrt(1 - alpha**2)
    x_t = alpha * x0 + sigma * noise
    optimizer.zero_grad(set_to_none=True)
    prediction = unet(x_t, 999 * t).sample
    loss = torch.nn.functional.mse_loss(prediction, noise)
    loss.backward()
    optimizer.step()
    return loss.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", default="32,64,64")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default="mnist:n_c=100")
    parser.add_argument("--device", default="cpu")
    benchlib.add_threads_option(parser)
    args = parser.parse_args()
    benchlib.apply_threads(args.threads)
    benchlib.header("trainer throughput against a plain diffusers loop")

    channels = [int(c) for c in args.channels.split(",")]
    settings = TrainSettings(
        architecture="unet", data=args.data, process="vp", epochs=1, batch_size=args.batch_size,
        network={"channels": channels}, device=args.device, progress=False,
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(settings, out)
    unet = build_core("unet", trainer.arguments, seed=1).to(args.device)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    x_all = trainer.data.x
    print(f"U-Net with channels {channels}: {count_parameters(trainer.network.core)} parameters; batch {args.batch_size}")

    def batches():
        for step in range(args.steps):
            start = (step * args.batch_size) % (x_all.shape[0] - args.batch_size)
            yield x_all[start : start + args.batch_size]

    def ours(x0):
        trainer.train_step(x0, None)

    def plain(x0):
        plain_step(unet, optimizer, x0.to(args.device), generator)

    trainer.network.train()
    unet.train()
    for x0 in list(batches())[:2]:
        ours(x0)
        plain(x0)
    # Alternate single steps, so both loops see the same load of a shared machine.
    wall_ratios, cpu_ratios, rates_ours, rates_plain = [], [], [], []
    items = args.steps * args.batch_size
    for _ in range(args.repeats):
        wall_ours = wall_plain = cpu_ours = cpu_plain = 0.0
        for x0 in batches():
            wall, cpu, _ = benchlib.clocked(lambda: ours(x0))
            wall_ours, cpu_ours = wall_ours + wall, cpu_ours + cpu
            wall, cpu, _ = benchlib.clocked(lambda: plain(x0))
            wall_plain, cpu_plain = wall_plain + wall, cpu_plain + cpu
        rates_ours.append(items / wall_ours)
        rates_plain.append(items / wall_plain)
        wall_ratios.append(wall_plain / wall_ours)
        cpu_ratios.append(cpu_plain / cpu_ours)
        print(
            f"  entropy-probe {items / wall_ours:.1f} items/s ({cpu_ours / items * 1e3:.2f} CPU ms per item), "
            f"plain diffusers loop {items / wall_plain:.1f} items/s ({cpu_plain / items * 1e3:.2f} CPU ms per item)"
        )
    print(f"entropy-probe trainer: {benchlib.summary(rates_ours)} items/s")
    print(f"plain diffusers loop:  {benchlib.summary(rates_plain)} items/s")
    print(f"throughput ratio (entropy-probe / plain), wall clock: {benchlib.summary(wall_ratios)}   target >= 1.0")
    print(f"throughput ratio (entropy-probe / plain), CPU time:   {benchlib.summary(cpu_ratios)}")

if __name__ == "__main__":
    main()
