"""Worker-side pieces: identity, runtime (connectors + running jobs), the job task, bootsteps,
control; :mod:`jobqueue.worker.concerns` lists them in the order they start and run, and
installs them into the app (from :class:`jobqueue.worker.node.Worker`)."""
