"""bplib: the library behind the executable re-run of Goldblum et al., "Truth or
Backpropaganda? An Empirical Investigation of Deep Learning Theory" (ICLR 2020).

Modules (one concept each): ``data`` (CIFAR as uint8 tensors, augmentation, normalization),
``models`` (the paper's architectures, ``make_model``), ``train`` (``fit``, ``evaluate``),
``results`` (records with provenance, ``load_or_run``), ``profiles`` (smoke / cpu / paper sizes),
``checks`` (parameter validation).
"""

__version__ = "0.1.0"
