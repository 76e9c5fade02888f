"""The shapes world and its offline diffusion prior."""
