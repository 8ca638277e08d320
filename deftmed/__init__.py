"""deftmed: medical image reconstruction with DEFT-fine-tuned diffusion priors."""

__version__ = "0.1.0"
