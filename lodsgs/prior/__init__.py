"""The diffusion prior and its guidance losses.

diffusion.py  DiffusionPrior (diffusers from_pretrained; latent and pixel-space models), resolve_model
guidance.py   Guidance: SDS, LODS-embedding, LODS-LoRA behind one call
fused.py      the guidance-gradient autograd op (CUDA kernel in cuda_ext/, PyTorch reference elsewhere)
tiny.py       tiny random models in the diffusers layout, for tests and benchmarks
Nothing is imported here: importing one submodule loads only what that submodule needs.
"""
