"""Training: methods, the trainer (``fa-train``), data sets, checkpoint bundles and the monitor
of (a) and (b) while a model trains; the reference architectures are ``pytest_fa.models``."""

DEFAULT_EPOCHS = 10  # fa-train's and train()'s budget, here so the torch-free CLI and the trainer share it
