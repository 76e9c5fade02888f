"""A tiny random Shap-E (diffusers ``ShapEPipeline``) saved in the diffusers layout, for the shap-e start's tests.

Its components follow diffusers' own unit tests of the pipeline (huggingface/diffusers
tests/pipelines/shap_e/test_shap_e.py): a one-layer PriorTransformer, a small CLIPTextModelWithProjection and
CLIP tokenizer, a Karras HeunDiscreteScheduler and a ShapERenderer with 8-wide layers. One thing those tests
leave out: the renderer's mesh decoder reads its marching-cubes table from the checkpoint (the ``cases`` and
``masks`` buffers, zeros until loaded), so a random renderer makes no mesh; here the table is built with
scikit-image's classic (Lorensen) marching cubes, one 2×2×2 cube per case.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lodsgs.prior.tiny import _clip_tokenizer

WIDTH = 32  # text width = prior embedding width = latent width
TOKENS = 32


def mc_table() -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers MeshDecoder's ``cases`` [256,5,3] (edge indices of each case's triangles) and ``masks``
    [256,5]: corner (x, y, z) of a cube is bit x + 2y + 4z of the case (set: inside, field > 0); edges 0-3 run
    along x at (y, z) = (0,0), (1,0), (0,1), (1,1), edges 4-7 along y at (x, z), edges 8-11 along z at (x, y)."""
    from skimage.measure import marching_cubes

    cases, masks = torch.zeros(256, 5, 3, dtype=torch.long), torch.zeros(256, 5, dtype=torch.bool)
    corners = np.array([[x, y, z] for z in range(2) for y in range(2) for x in range(2)])  # bit order
    for case in range(1, 255):
        field = np.empty((2, 2, 2))
        for bit, (x, y, z) in enumerate(corners):
            field[x, y, z] = 1.0 if case >> bit & 1 else -1.0
        verts, faces, _, _ = marching_cubes(field, 0.0, method="lorensen")
        twice = np.round(verts * 2).astype(int)  # each vertex is an edge's midpoint: one coordinate is 1
        axis = np.argmax(twice == 1, axis=1)
        rest = twice // 2
        edge = np.choose(axis, [rest[:, 1] + 2 * rest[:, 2], 4 + rest[:, 0] + 2 * rest[:, 2],
                                8 + rest[:, 0] + 2 * rest[:, 1]])
        cases[case, :len(faces)] = torch.as_tensor(edge[faces])
        masks[case, :len(faces)] = True
    return cases, masks


def build_tiny_shap_e(folder: Path | str, seed: int = 0, like_hub: bool = False) -> Path:
    """Save a random tiny ShapEPipeline to ``folder`` (safetensors). ``like_hub``: the files as openai/shap-e
    holds them instead: prior/ and text_encoder/ as fp16 safetensors only, shap_e_renderer/ as a .bin only."""
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer(folder / "tokenizer", TOKENS)
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=WIDTH, projection_dim=WIDTH, intermediate_size=37,
        num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=TOKENS, pad_token_id=0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=16, embedding_dim=WIDTH, num_embeddings=32,
                             embedding_proj_dim=WIDTH, time_embed_dim=4 * WIDTH, num_layers=1,
                             clip_embed_dim=2 * WIDTH, additional_embeddings=0, time_embed_act_fn="gelu",
                             norm_in_type="layer", encoder_hid_proj_type=None, added_emb_type=None)
    renderer = ShapERenderer(param_shapes=((8, 93), (8, 8), (8, 8), (8, 8)), d_latent=WIDTH, d_hidden=8,
                             n_output=12, background=(0.1, 0.1, 0.1))
    renderer.mesh_decoder.cases, renderer.mesh_decoder.masks = mc_table()
    scheduler = HeunDiscreteScheduler(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
                                      use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0)
    pipe = ShapEPipeline(prior=prior, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                         shap_e_renderer=renderer)
    pipe.save_pretrained(folder, safe_serialization=True)
    if like_hub:
        for name in ("prior", "text_encoder"):
            for f in (folder / name).glob("*.safetensors"):
                f.unlink()
            getattr(pipe, name).half().save_pretrained(folder / name, safe_serialization=True, variant="fp16")
        for f in (folder / "shap_e_renderer").glob("*.safetensors"):
            f.unlink()
        renderer.save_pretrained(folder / "shap_e_renderer", safe_serialization=False)
    return folder
