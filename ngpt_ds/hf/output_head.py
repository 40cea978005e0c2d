"""get_output_embeddings / set_output_embeddings of the transformers causal LMs (ngpt_ds.hf.modeling_ngpt): the
output projection that transformers' quantizers (the modules kept unconverted), FSDP's wrapping policy, PEFT and
the generation utilities look up by identity among the model's modules.

transformers' own methods look for an `lm_head` attribute: ngpt_ds's head is `model.head`, so they returned None
(the head went unnamed to every one of them) and set_output_embeddings stopped with an AttributeError.

The head is never tied to the input embedding: nGPT's are separate matrices (paper section 2.1), and so are the
GPT baseline's (config.tie_word_embeddings is False and `_tied_weights_keys` is None, so transformers' tie_weights
leaves both alone).

This file is also copied into every `--format hf` export (with its ngpt_ds imports made relative).
"""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from ngpt_ds.model.layers import DeclaredMatrix, Projection
from ngpt_ds.model.saved_weights import NORM_TOLERANCE
from ngpt_ds.model.sphere import norm_deviation


class OutputHead:
    """The output head accessors of a causal LM whose ngpt_ds model is `self.model` (a CausalLM)."""

    model: Any
    config: Any

    def get_output_embeddings(self) -> nn.Module:
        """The output projection E_out, `model.head`: an ngpt_ds Projection whose weight is [vocab_size, n_embd] (the
        module that holds the head's weights, under the name model.head).

        It is the weight matrix only. The GPT baseline's logits are head(final_norm(h)), so head(x) of the last
        hidden state (after the final norm) are its logits; nGPT's logits are s_z * (h E_out^T) (eq. 24 of the paper:
        the per-token scale s_z, `model.s_z`, multiplies them), so head(h) alone are cosines in [-1, 1], not the
        logits. Compute logits with the model's forward (or `model.model.logits(h)`)."""
        return cast(nn.Module, self.model.head)

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        """Makes `new_embeddings` the output head (`model.head`). It must be an ngpt_ds Projection of the model's
        shape (weight [vocab_size, n_embd]) and kind (on the hypersphere in nGPT, its rows unit norm; off it in the
        GPT baseline): the forward gives it nGPT's logit scale s_z (one per token) and the saved folder holds it as
        model.head.weight. A new vocabulary size goes through resize_token_embeddings, which resizes s_z with it."""
        vocab, width = cast(DeclaredMatrix, self.model.embed).weight.shape
        sphere = self.config.arch == "ngpt"
        problem = None
        if not isinstance(new_embeddings, Projection):
            problem = f"is a {type(new_embeddings).__name__}, not an ngpt_ds Projection"
        elif tuple(new_embeddings.weight.shape) != (vocab, width):
            problem = f"has a weight of shape {list(new_embeddings.weight.shape)}, not [{vocab}, {width}]"
        elif new_embeddings.style != "column" or new_embeddings.on_sphere != sphere:
            problem = (
                f"is a Projection of style {new_embeddings.style!r}, on_sphere={new_embeddings.on_sphere}, not "
                f"style 'column', on_sphere={sphere}"
            )
        elif sphere and not new_embeddings.weight.is_meta:
            # An nGPT head's rows are unit vectors (paper section 2.1): one off the sphere gave logits that are not
            # s_z times cosines, and save_pretrained wrote a folder that from_pretrained refuses as corrupt.
            deviation = norm_deviation(new_embeddings.weight.detach(), new_embeddings.layout.norm_dim)
            tolerance = NORM_TOLERANCE.get(new_embeddings.weight.dtype, 1e-2)
            if not deviation <= tolerance:
                problem = (
                    f"has rows that are not unit norm (largest | ||w|| - 1 | = {deviation:.3g} > {tolerance:g}), "
                    "and nGPT's head rows lie on the hypersphere: normalize them first, "
                    "w / w.norm(dim=1, keepdim=True)"
                )
        if problem is not None:
            raise ValueError(
                f"{type(self).__name__}.set_output_embeddings: the new head {problem} (the head is [vocab_size, "
                "n_embd], ngpt_ds.model.layers.Projection). To give the head other weights, assign "
                "model.get_output_embeddings().weight = nn.Parameter(w); to change the vocabulary, call "
                "model.resize_token_embeddings(n)"
            )
        self.model.head = new_embeddings
