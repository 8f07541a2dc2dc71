"""The caller's side of serve_cleanup, one module per job:

==============  ==========================================================================
module          job
==============  ==========================================================================
``controller``  find the Serve controller from a connected process; which kind it is
``start``       start Serve with the durable controller (``serve_cleanup.start``)
``args``        the argument checks, done in the caller's process before any call
``calls``       calls to the durable controller: one retry policy (a generator) with a
                blocking and an awaitable driver (``register``, ``unregister``, ``collect``)
``gcs``         reading the records and the actor table, also without a Ray driver (the
                CLI's ``list`` and ``status``)
``shutdown``    drive Serve's shutdown to the end and report what is left
==============  ==========================================================================

The public names are exported lazily from ``serve_cleanup`` itself.
"""
