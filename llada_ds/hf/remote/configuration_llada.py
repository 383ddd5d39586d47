"""LLaDA configuration (written by llada-ds; self-contained: transformers only).

Keys as in the released LLaDA checkpoints' config.json.
"""

from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(self, d_model=4096, n_heads=32, n_kv_heads=None, n_layers=32, mlp_hidden_size=12288,
                 mlp_ratio=None, vocab_size=126464, embedding_size=None, max_sequence_length=4096,
                 rope_theta=500000.0, rms_norm_eps=1e-5, mask_token_id=126336, eos_token_id=126081,
                 pad_token_id=126081, bos_token_id=None, block_type="llama", activation_type="silu",
                 layer_norm_type="rms", include_bias=False, weight_tying=False, rope=True, **kwargs):
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads if n_kv_heads is not None else n_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.mlp_ratio = mlp_ratio
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size if embedding_size is not None else vocab_size
        self.max_sequence_length = max_sequence_length
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.mask_token_id = mask_token_id
        self.block_type = block_type
        self.activation_type = activation_type
        self.layer_norm_type = layer_norm_type
        self.include_bias = include_bias
        self.weight_tying = weight_tying
        self.rope = rope
        # Generic names some tools look for.
        self.hidden_size = d_model
        self.num_attention_heads = n_heads
        self.num_hidden_layers = n_layers
        kwargs.pop("tie_word_embeddings", None)
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
                         tie_word_embeddings=False, **kwargs)
