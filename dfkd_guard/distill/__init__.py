"""``dfkd-guard distill``: distil a teacher of your own from one config file (:mod:`.config`, :mod:`.run`)."""
