"""Fine-tuning a segmentation network on labelled images (``seg-perception train``).

:func:`~.fine_tune.fine_tune` is the whole run; :mod:`.data` checks and feeds the images,
:mod:`.model_surgery` gives the network its new head, :mod:`.loop` trains it,
:mod:`.checkpoint` saves it and :mod:`.distributed` lets the same code run under ``torchrun``.
"""
