"""The diffusion prior and its guidance losses (SDS, LODS-embedding, LODS-LoRA)."""
