"""Models from the Hub to disk: listings checked before a byte is fetched (listing), resumable verified
transfers (transfer), the jobs that run them (manager), the files on disk (store), the catalog and the
user's library of models."""
