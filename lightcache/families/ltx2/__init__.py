"""LTX-2 (``LTX2Pipeline``): video and audio denoised together, up to three guidance calls per step."""
