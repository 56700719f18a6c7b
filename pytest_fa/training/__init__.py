"""Training: methods, the trainer, data sets and checkpoint bundles.

- ``methods``: BP, FA, DFA, EP and the bridge methods behind one ``Method`` interface.
- ``trainer``: the paper's recipe and the ``fa-train`` command.
- ``data``: MNIST-1D (embedded default), Fashion-MNIST, CIFAR and synthetic sets as tensors.
- ``checkpoint``: bundles (weights, feedback matrices, data spec) and their safe loading.
- ``monitor``: diagnostics (a) and (b) watched while a model trains.

The reference architectures are ``pytest_fa.models``, at the package top.
"""

DEFAULT_EPOCHS = 10  # fa-train's and train()'s budget, here so the torch-free CLI and the trainer share it
