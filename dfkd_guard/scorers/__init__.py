"""Built-in OOD scorers, each a plugin module.

All return one float per sample, higher = more OOD-like:

* ``logit_scores``: ``msp``, ``energy``, ``entropy`` from the teacher's logits.
* ``atesc``: adversarial robustness of the teacher's prediction (PGD).
* ``odin``: temperature-scaled MSP after an input-preprocessing step.
* ``bn_deviation``: distance of BatchNorm inputs from the running statistics.
"""
