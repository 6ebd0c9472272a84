"""The Retrain page's machinery: ``run_form`` (what the form asks for, the ``svite train`` command it
stands for, its defaults) and ``registry`` (runs launched as subprocesses, tracked on disk, surviving a
reload, cancellable)."""
