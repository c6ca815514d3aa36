"""entropy-probe: measure the neural entropy of diffusion models.

Neural entropy S_NN is the information a diffusion model's network supplies while it reverses
a forward noising process (Premkumar, "Neural Entropy", NeurIPS 2025). This package estimates
it, with the cross-entropy and KL bounds and their standard errors, for any checkpoint under any
linear forward process. Entropies are in nats; time t = 0 is data.
"""

__version__ = "0.1.0"
