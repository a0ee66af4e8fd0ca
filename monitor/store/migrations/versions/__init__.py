"""The revisions, oldest first: ``v0001_baseline`` is the schema of every monitor before migrations."""
