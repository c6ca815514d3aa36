"""Options of `measure` that choose the estimator and its throughput settings."""

from __future__ import annotations

import click

#: Samples per cell when --samples is not given: those of a complete estimate, and those of the
#: pilot round that plans the sampling towards --target-stderr.
DEFAULT_SAMPLES = 256
DEFAULT_FIRST_ROUND_SAMPLES = 8


class BatchSize(click.ParamType):
    """A positive integer or the word 'auto'."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is invalid; give a positive integer or 'auto'", param, ctx)
        if number < 1:
            self.fail(f"{number} is invalid; the batch size must be >= 1 or 'auto'", param, ctx)
        return number


ESTIMATION_OPTIONS = [
    click.option("--estimator", type=click.Choice(["grid", "importance"]), help="importance: times drawn from a proposal, stratified, unbiased; grid: quadrature nodes in log(σ/α). Default: importance, or grid when --nodes or --rule is given."),
    click.option("--strata", type=int, default=64, help="Strata of equal proposal probability (--estimator importance)."),
    click.option("--proposal", type=click.Choice(["gaussian", "pilot", "log-snr", "uniform-t"]), default="gaussian", help="Proposal q(t): the rate of Gaussian data with the data's moments, a pilot run's rate, uniform in log-SNR, or uniform in t."),
    click.option("--antithetic", is_flag=True, help="Evaluate pairs (x_0, ε) and (x_0, −ε); the pair mean is one sample."),
    click.option("--target-stderr", type=float, metavar="X", help="Sample in rounds until the standard error of S_NN is below X times S_NN (for example 0.01)."),
    click.option("--max-evaluations", type=int, metavar="N", help="Cap on network evaluations (default with --target-stderr: 10 million)."),
    click.option("--memory-budget", "memory_budget_gb", type=float, metavar="GB", help="Memory for one batch with --batch-size auto (default: 80 % of free GPU memory, or 1/8 of RAM)."),
    click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", help="Network precision under CUDA autocast; the rates and sums stay float64."),
    click.option("--compile", "compile_model", is_flag=True, help="Compile the network with torch.compile (CUDA)."),
    click.option("--cuda-graphs", is_flag=True, help="Replay CUDA graphs (torch.compile mode reduce-overhead)."),
    click.option("--channels-last", is_flag=True, help="Channels-last memory layout for image networks."),
    click.option("--prefetch/--no-prefetch", default=True, help="Prepare the next batch's draws in a background thread."),
]


def estimation_options(function):
    """Add the estimator and throughput options to a command."""
    for option in reversed(ESTIMATION_OPTIONS):
        function = option(function)
    return function


def settings_fields(samples, options: dict, ctx: click.Context) -> dict:
    """Return MeasureSettings fields from --samples and the options above.

    Without --estimator, importance sampling is used unless --nodes or --rule asks for a grid:
    it is unbiased whatever the shape of the rate, and at equal evaluations its variance was
    half that of the 65-node grid on the models in docs/benchmarks.md.
    """
    if options.get("estimator") is None:
        explicit = {
            name for name in ("nodes", "rule")
            if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)
        }
        options = dict(options, estimator="grid" if explicit else "importance")
    if samples is None:
        samples = DEFAULT_FIRST_ROUND_SAMPLES if options.get("target_stderr") is not None else DEFAULT_SAMPLES
    fields = dict(options)
    fields["compile"] = fields.pop("compile_model")
    fields["samples"] = samples
    return fields
