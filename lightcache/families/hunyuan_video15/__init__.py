"""HunyuanVideo-1.5 (text- and image-to-video): a Qwen2.5-VL and a ByT5 text encoder, guidance through a guider."""
