"""deftmed.diffusion"""
