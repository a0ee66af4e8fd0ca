"""Worker-side pieces: identity, runtime (connectors + running jobs), bootsteps, control."""
