"""The accelerations, one module each, every one a pair ``apply_x`` / ``remove_x`` of hooks on a pipeline's modules.

* :mod:`~lightcache.techniques.easycache`: EasyCache, runtime-adaptive reuse of the denoiser's transformation;
* :mod:`~lightcache.techniques.swap`: asynchronous swapping of idle modules and cache tensors to pinned host memory;
* :mod:`~lightcache.techniques.chunk`: exact feature chunking (the shared token slicing; a family supplies its
  blocks' chunked forwards);
* :mod:`~lightcache.techniques.decode`: sliced decoding (the shared band plan and pinned side-stream store; a family
  supplies its VAE's band decoder);
* :mod:`~lightcache.techniques.compile`: torch.compile of the denoisers' repeated blocks.

A technique never imports a model family and never looks an adapter up: what differs per family reaches it as the
adapter (or what the adapter returns) passed in by :func:`lightcache.accelerate.apply_lightcache`.
"""
