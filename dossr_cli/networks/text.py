"""OpenCLIP's text tower, only as far as DoSSR uses it: the penultimate layer's output.

DoSSR conditions on one fixed prompt with guidance scale 1, so its context is a constant
of the model: we compute it once when importing a checkpoint and store it. A short
module of our own keeps open_clip's parameter names (no mapping table) and spares the
runtime a dependency on transformers or open_clip for one matrix.
"""

from __future__ import annotations

import torch
from torch import nn

from dossr_cli.networks.config import TextConfig

PROMPT = "clean, high-resolution, 8k"
# open_clip 2.24's tokenizer on PROMPT: start, tokens, end, then zero padding to 77
PROMPT_TOKEN_IDS = (49406, 3772, 267, 1400, 268, 9977, 267, 279, 330, 49407)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))

    def forward(self, x: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=causal_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(config.width, config.heads) for _ in range(config.layers))


class OpenCLIPTextTower(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, config.width))
        self.transformer = Transformer(config)
        self.ln_final = nn.LayerNorm(config.width)

    def penultimate(self, token_ids: torch.Tensor) -> torch.Tensor:
        """All blocks but the last, then ln_final: FrozenOpenCLIPEmbedder(layer="penultimate")."""
        n = self.config.context_length
        x = self.token_embedding(token_ids) + self.positional_embedding
        causal_mask = torch.full((n, n), float("-inf"), device=x.device).triu(1)
        for block in self.transformer.resblocks[:-1]:
            x = block(x, causal_mask)
        return self.ln_final(x)


def prompt_token_ids(context_length: int = 77) -> torch.Tensor:
    ids = torch.zeros(1, context_length, dtype=torch.long)
    ids[0, : len(PROMPT_TOKEN_IDS)] = torch.tensor(PROMPT_TOKEN_IDS)
    return ids


@torch.no_grad()
def prompt_context(tower: OpenCLIPTextTower) -> torch.Tensor:
    """The (1, 77, width) cross-attention context DoSSR conditions every image on."""
    return tower.penultimate(prompt_token_ids(tower.config.context_length)).float()



