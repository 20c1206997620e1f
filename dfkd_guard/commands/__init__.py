"""Sub-commands of the ``dfkd-guard`` command line (see :mod:`dfkd_guard.cli`)."""
