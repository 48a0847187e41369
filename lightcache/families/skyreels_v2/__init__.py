"""SkyReels-V2 (``SkyReelsV2Pipeline``, image-to-video and diffusion forcing): a Wan-architecture transformer."""
