"""HunyuanVideo (``HunyuanVideoPipeline``): a Llama and a CLIP text encoder, embedded guidance."""
